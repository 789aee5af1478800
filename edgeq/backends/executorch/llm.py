"""Decoder LLMs on ExecuTorch: a static KV cache inside the program, lowered with XNNPACK.

The program wraps the transformers model with a KV cache of ``max_context`` positions held
as mutable buffers, laid out ``[batch, position, kv_head, head_dim]``, and captures it with
strict ``torch.export`` and a dynamic sequence dimension, so one ``forward(input_ids[1, n],
cache_position[n])`` call prefills a whole prompt and ``n == 1`` decodes one token. It
returns the logits of the last position fed only (the head runs on that position alone;
perplexity feeds one token per call). Attention runs in ExecuTorch's own LLM kernels
(``executorch.extension.llm.custom_ops``): ``llama.update_cache`` writes the new keys and
values into the cache in place, and ``llama.custom_sdpa`` attends over the positions filled
so far (causal from the start position; a sliding-window layer gets its window as a mask),
instead of a score matrix over the whole context. The program also carries the constant
methods ExecuTorch's own LLM runner reads (``get_max_context_len``, ``get_vocab_size``,
``use_kv_cache``...), which is how ``open_lm`` learns the context length.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeq.backends import silence_native_stderr
from edgeq.backends.executorch.costs import LM_MEMORY
from edgeq.backends.executorch.llm_quant import as_lm_quant, quantize_lm
from edgeq.errors import ArtifactError, ExportError, RunError, describe
from edgeq.llm.session import LoweredLM, head_storage, linears_with_int8_activations

MODEL_FILE = "model.pte"


def lower_lm(model: Any, plan_or_scheme_info: Any, workdir: Path, max_context: int, steps: Any,
             calibrated: dict[str, Any] | None = None, owned: bool = False) -> LoweredLM:
    """Quantize ``model`` (a transformers causal LM, fp32) per the plan, export it with a
    static KV cache of ``max_context`` positions and lower it to ``workdir/model.pte``.
    ``calibrated``: ``{fqn: QuantizedWeight}`` of the plan's calibrated (GPTQ) layers."""

    quant = as_lm_quant(plan_or_scheme_info)
    with steps.step("Quantizing the LLM") as info:
        qmodel, applied = quantize_lm(model, quant, calibrated, in_place=owned)
        counts: dict[str, int] = {}
        for s in applied.values():
            counts[s] = counts.get(s, 0) + 1
        info.detail = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "fp32"
    with steps.step(f"Capturing with a static KV cache ({max_context} positions)") as info:
        program, cache_bytes, cache_dtype = _capture(qmodel, max_context)
        info.detail = f"{sum(1 for n in program.graph.nodes if n.op == 'call_function')} ops"
    out = Path(workdir) / MODEL_FILE
    with steps.step("Lowering to XNNPACK") as info:
        summary, arena = _lower(program, out, _constant_methods(model, max_context))
        info.detail = (f"xnnpack: {summary['delegated_ops'].get('xnnpack', 0)} ops, "
                       f"portable: {summary['portable_op_count']} ops")
    return LoweredLM(
        model_file=out,
        runtime=f"ExecuTorch {_version()} pybindings (XNNPACK)",
        delegates_used=[d for d, n in summary["delegated_ops"].items() if n],
        layer_schemes=applied,
        linear_compute=linears_with_int8_activations(model, applied),  # 8da8w / 8da4w
        max_context=max_context,
        kv_cache_dtype=cache_dtype,
        kv_cache_bytes=cache_bytes,
        delegation={**summary, "planned_activation_bytes": arena,
                    "head": head_storage(model, applied), "prefill": "whole prompt in one call",
                    "logits": LM_MEMORY.program_logits,
                    "attention": "ExecuTorch LLM kernels (llama.update_cache, llama.custom_sdpa)"},
    )


def open_lm(model_file: str | Path) -> "ExecuTorchLM":
    """An ``LMSession`` over a ``.pte`` written by ``lower_lm``, in the ExecuTorch pybindings."""
    return ExecuTorchLM(Path(model_file))


class ExecuTorchLM:
    """One conversation with an ExecuTorch LLM program; holds the position counter
    (the KV cache itself lives in the program's mutable buffers)."""

    def __init__(self, model_file: Path) -> None:
        import executorch.kernels.quantized  # noqa: F401  registers embedding_4bit / embedding_byte

        import_custom_ops()
        from executorch.runtime import Runtime

        try:
            with silence_native_stderr():
                program = Runtime.get().load_program(str(model_file))
                self.max_context = int(_constant(program, "get_max_context_len"))
                self.vocab_size = int(_constant(program, "get_vocab_size"))
                self._forward = program.load_method("forward")
        except Exception as exc:
            raise ArtifactError(
                f"ExecuTorch cannot load {model_file} as an LLM program ({describe(exc, 160)})",
                "the file is corrupt or was not written by 'edgeq export' for a causal LM; re-export it") from None
        self._program = program
        self.runtime = f"ExecuTorch {_version()} pybindings (XNNPACK)"
        self.position = 0

    def prefill(self, token_ids: list[int], *, all_logits: bool = False) -> Any:
        """Start a new sequence with ``token_ids`` (one call); logits after the last one. With
        ``all_logits`` (perplexity), one call per token: the program returns the last
        position's logits only."""
        if not token_ids:
            raise RunError("cannot prefill an empty prompt", "give at least one token")
        self.reset()
        if all_logits:
            import numpy as np

            return np.stack([self._run([int(t)]) for t in token_ids])
        return self._run(list(token_ids))

    def decode(self, token_id: int) -> Any:
        """Append one token; logits for the position after it."""
        return self._run([int(token_id)])

    def reset(self) -> None:
        # The program overwrites cache rows from cache_position on and masks every later
        # row, so starting again at position 0 is a reset.
        self.position = 0

    def close(self) -> None:
        self._forward = None
        self._program = None

    def _run(self, ids: list[int]) -> Any:
        import torch

        if self._forward is None:
            raise RunError("this LLM session is closed", "open the artifact again")
        end = self.position + len(ids)
        if end > self.max_context:
            raise RunError(f"{end} tokens exceed the artifact's context of {self.max_context}",
                           "use a shorter prompt or fewer new tokens, or re-export with a larger --max-context")
        tokens = torch.tensor([ids], dtype=torch.long)
        positions = torch.arange(self.position, end, dtype=torch.long)
        with silence_native_stderr():
            logits = self._forward.execute([tokens, positions])[0]
        self.position = end
        return logits[0, -1].float().numpy().copy()


# ------------------------------------------------------------------------- internals


def _capture(qmodel: Any, max_context: int) -> tuple[Any, int, str]:
    import torch

    config = qmodel.config.get_text_config()
    check_lm(config)
    # The capture switches the model to the fused attention; at fp32 ``qmodel`` is the
    # caller's own model, so its settings are put back afterwards.
    saved = config._attn_implementation
    try:
        wrapped = _cached_lm(qmodel, max_context)
        cache = [b for n, b in wrapped.named_buffers() if n.startswith(("key_cache_", "value_cache_"))]
        cache_bytes = sum(b.numel() * b.element_size() for b in cache)
        cache_dtype = str(cache[0].dtype).removeprefix("torch.") if cache else "none"
        n = min(4, max_context)
        seq = torch.export.Dim("seq", min=1, max=max_context)
        with torch.no_grad():
            program = torch.export.export(
                wrapped, (torch.zeros(1, n, dtype=torch.long), torch.arange(n)),
                dynamic_shapes={"input_ids": {1: seq}, "cache_position": {0: seq}}, strict=True)
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"torch.export cannot capture this LLM with a static KV cache ({describe(exc, 200)})",
                          "report the architecture; a model transformers can export for ExecuTorch is needed") from None
    finally:
        config._attn_implementation = saved
    return program, cache_bytes, cache_dtype


_ATTENTION = "edgeq_executorch_sdpa"


def import_custom_ops() -> None:
    """Register ExecuTorch's LLM ops (``llama.custom_sdpa``, ``llama.update_cache``) with torch
    and with the pybindings' kernel registry."""
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401


def check_lm(config: Any) -> None:
    """Refuse, before any work, a model (its text config) whose attention ExecuTorch's LLM
    kernels cannot compute: they compute causal softmax attention, with an optional sliding
    window."""
    features = {"attn_logit_softcapping": "soft-capped attention logits",
                "alibi": "ALiBi position biases", "use_alibi": "ALiBi position biases"}
    for key, what in features.items():
        if getattr(config, key, None):
            raise _unsupported(what)
    if getattr(config, "is_encoder_decoder", False):
        raise ExportError("encoder-decoder models are not decoder LLMs", "export a decoder-only causal LM")


def _unsupported(what: str) -> ExportError:
    return ExportError(f"this model's attention uses {what}, which ExecuTorch's fused LLM attention does not "
                       "compute", "export it for an ONNX target instead")


def _cached_layer(max_context: int, kv_heads: int, head_dim: int, dtype: Any) -> Any:
    """A transformers cache layer whose keys and values live ``[1, max_context, kv_heads,
    head_dim]`` (the layout ExecuTorch's LLM ops take) and are written with
    ``llama.update_cache`` at the position the wrapper sets."""
    import torch
    from transformers.cache_utils import StaticLayer

    class SeqMajorLayer(StaticLayer):
        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            start = _start(self)
            torch._check(start + key_states.shape[-2] <= self.max_cache_len)
            torch.ops.llama.update_cache(key_states.transpose(1, 2), self.keys, start)
            torch.ops.llama.update_cache(value_states.transpose(1, 2), self.values, start)
            return self.keys, self.values

    layer = SeqMajorLayer(max_context)
    layer.keys = torch.zeros(1, max_context, kv_heads, head_dim, dtype=dtype)
    layer.values = torch.zeros(1, max_context, kv_heads, head_dim, dtype=dtype)
    layer.dtype, layer.device, layer.batch_size, layer.num_heads = dtype, layer.keys.device, 1, kv_heads
    layer.k_head_dim = layer.v_head_dim = head_dim
    layer.is_initialized = True
    return layer


def _start(layer: Any) -> Any:
    """The position the current call starts at, as a size the export can reason about: read
    once per call (``CachedLM.forward``) and handed to every layer, so the program holds one
    read of it, not one per layer (each a few ops outside XNNPACK in every decode step)."""
    return layer.edgeq_start


def _read_start(position: Any, max_cache_len: int) -> Any:
    import torch

    start = position.item()
    torch._check_is_size(start)
    torch._check(start < max_cache_len)
    return start


def _fused_attention(cache: Any) -> Any:
    """A transformers attention function over ``cache``'s seq-major layers: the query is
    transposed to ``[1, n, heads, head_dim]`` and ``llama.custom_sdpa`` attends, causally from
    the start position, over the positions filled so far (grouped-query heads as they are)."""
    import torch

    def attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: Any = None,
                  dropout: float = 0.0, sliding_window: Any = None, softcap: Any = None,
                  **kwargs: Any) -> tuple[Any, None]:
        if softcap is not None:  # a soft-cap check_lm found under no config key it knows
            raise _unsupported("soft-capped attention logits")
        layer = cache.layers[module.layer_idx]
        start = _start(layer)
        q = query.transpose(1, 2)
        if sliding_window and sliding_window < layer.max_cache_len:
            # position p sees the keys in (p - window, p]: an additive mask over the whole cache
            n = q.shape[1]
            rows = torch.arange(n).unsqueeze(1) + start
            cols = torch.arange(layer.max_cache_len).unsqueeze(0)
            seen = (cols <= rows) & (cols > rows - sliding_window)
            mask = torch.where(seen, 0.0, float("-inf")).to(torch.float32)
            out = torch.ops.llama.custom_sdpa(q, key, value, 0, mask, 0.0, False, scaling)
        else:
            out = torch.ops.llama.custom_sdpa(q, key, value, start, None, 0.0, True, scaling)
        return out, None

    return attention


def _cached_lm(model: Any, max_context: int) -> Any:
    import torch
    from transformers import AttentionInterface
    from transformers.cache_utils import StaticCache
    from transformers.configuration_utils import get_head_shapes
    from transformers.masking_utils import AttentionMaskInterface

    import_custom_ops()

    class CachedLM(torch.nn.Module):
        """``forward(input_ids[1, n], cache_position[n])`` → logits ``[1, 1, vocab]`` of the last
        position, the cache in this module's buffers. Only the last position goes through
        the head: every position's logits would be planned into the arena for a prefill as
        long as the context (SmolLM2 at 512 positions: 100.7 MB; Llama-3.2-1B at 2048: 1.05 GB)."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model
            config = model.config.get_text_config()
            heads, head_dim = get_head_shapes(config)
            if not isinstance(heads, int) or not isinstance(head_dim, int):
                raise ExportError("this model's layers have different attention shapes",
                                  "export it for an ONNX target instead")
            self.cache = StaticCache(max_cache_len=max_context, config=config)
            self.cache.layers = [_cached_layer(max_context, heads, head_dim, model.dtype)
                                 for _ in self.cache.layers]
            self.register_buffer("cache_start", torch.tensor(0, dtype=torch.long), persistent=False)
            for i, layer in enumerate(self.cache.layers):
                self.register_buffer(f"key_cache_{i}", layer.keys, persistent=False)
                self.register_buffer(f"value_cache_{i}", layer.values, persistent=False)
                layer.cumulative_length = self.cache_start  # one position for all (get_seq_length reads it)
            AttentionInterface.register(_ATTENTION, _fused_attention(self.cache))
            AttentionMaskInterface.register(_ATTENTION, _no_mask)  # the kernel masks by position
            config._attn_implementation = _ATTENTION

        def forward(self, input_ids: Any, cache_position: Any) -> Any:
            self.cache_start.copy_(cache_position[0])
            start = _read_start(self.cache_start, max_context)
            for layer in self.cache.layers:
                layer.edgeq_start = start
            out = self.model(input_ids=input_ids, attention_mask=None, past_key_values=self.cache, use_cache=True,
                             logits_to_keep=1)
            return out.logits

    return CachedLM()


def _no_mask(*args: Any, **kwargs: Any) -> None:
    return None


def _constant_methods(model: Any, max_context: int) -> dict[str, Any]:
    cfg = model.config.get_text_config()
    eos = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None else cfg.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    out = {
        "get_max_seq_len": max_context, "get_max_context_len": max_context,
        "get_vocab_size": int(cfg.vocab_size), "use_kv_cache": True, "enable_dynamic_shape": True,
        "get_n_layers": int(getattr(cfg, "num_hidden_layers", 0) or 0),
    }
    if getattr(cfg, "bos_token_id", None) is not None:
        out["get_bos_id"] = int(cfg.bos_token_id)
    if eos_ids:
        out["get_eos_ids"] = [int(e) for e in eos_ids]
    return out


def _lower(program: Any, out: Path, constants: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Lower to XNNPACK and write ``out``; the delegation summary (as the non-LLM lowering
    writes it) and the forward method's planned activation bytes."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower

    from edgeq.backends.executorch.lowering import _delegation_summary, _portable_ops
    from edgeq.backends.executorch.passes import delegable_shapes

    try:
        edge = to_edge_transform_and_lower(
            program, transform_passes=[delegable_shapes()], partitioner=[XnnpackPartitioner()], constant_methods=constants,
            compile_config=EdgeCompileConfig(_check_ir_validity=False))
        summary = _delegation_summary(edge.exported_program().graph_module)
        # quant fusion turns dequantize + embedding into embedding_4bit / embedding_byte
        manager = edge.to_executorch(ExecutorchBackendConfig(
            extract_delegate_segments=True, do_quant_fusion_and_const_prop=True))
        portable = _portable_ops(manager.exported_program().graph_module)
        summary["portable_op_count"], summary["portable_ops"] = sum(portable.values()), dict(portable.most_common())
    except Exception as exc:
        raise ExportError(f"lowering the LLM to ExecuTorch failed ({describe(exc, 200)})",
                          "try --precision fp32 to see whether quantization is the cause") from None
    tmp = out.with_suffix(".pte.tmp")
    with tmp.open("wb") as f:
        manager.write_to_file(f)
    tmp.replace(out)
    plans = [p for p in manager.executorch_program.execution_plan if p.name == "forward"]
    arena = int(sum(plans[0].non_const_buffer_sizes[1:])) if plans else 0  # forward's planned memory
    return summary, arena


def _constant(program: Any, name: str) -> Any:
    value = program.load_method(name).execute([])[0]
    return value.item() if hasattr(value, "item") else value


def _version() -> str:
    from importlib.metadata import version

    return version("executorch")

