"""GGUF decoder LLMs: ``lower_lm`` writes the plan as a GGUF (``writer``) and checks that
llama.cpp loads it; ``check_lm`` refuses, before any work, a model the writer cannot take."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeq.llm.session import LINEAR_FP16, LINEAR_FP32, LINEAR_INT8_DYNAMIC, LoweredLM

MODEL_FILE = "model.gguf"


def check_lm(config: Any) -> None:
    """Refuses an architecture, rope scaling or attention the GGUF writer does not write."""
    from edgeq.backends.gguf.writer import check_arch

    check_arch(config)


def lower_lm(model: Any, plan: Any, workdir: Path, max_context: int, steps: Any = None, *,
             tokenizer: Any = None) -> LoweredLM:
    """Write causal LM ``model`` with ``plan`` (fqn → scheme relative to ``model``; None = fp32)
    as ``workdir/model.gguf`` and open it in llama.cpp once."""
    from edgeq.backends.gguf.costs import LM_MEMORY, gguf_type
    from edgeq.backends.gguf.llm_session import reserved_buffers, runtime_name
    from edgeq.backends.gguf.writer import bpe_model, write_gguf
    from edgeq.llm.costs import LMShape, kv_cache_bytes
    from edgeq.planning.inventory import layer_inventory
    from edgeq.progress import Steps
    from edgeq.schemes import FP32

    steps = steps or Steps(show=False)
    config = model.config.get_text_config()
    check_lm(config)
    bpe_model(tokenizer)  # refuse a tokenizer GGUF cannot hold before writing anything
    schemes = dict(plan.schemes) if plan is not None else {}
    out = Path(workdir) / MODEL_FILE
    template = getattr(tokenizer, "chat_template", None)
    with steps.step("Writing GGUF") as info:
        written = write_gguf(model, schemes, out, max_context=max_context, tokenizer=tokenizer,
                             chat_template=template if isinstance(template, str) else None,
                             name=str(getattr(config, "_name_or_path", "") or config.model_type))
        counts: dict[str, int] = {}
        for t in written.values():
            counts[t] = counts.get(t, 0) + 1
        info.detail = ", ".join(f"{n} {t}" for t, n in sorted(counts.items())) + f"; {out.stat().st_size / 1e6:.2f} MB"
    with steps.step("Loading in llama.cpp") as info:
        buffers = reserved_buffers(out)
        info.detail = (f"{runtime_name()}; KV cache {buffers['kv'] / 2**20:.2f} MiB, compute buffers "
                       f"{buffers['compute'] / 2**20:.2f} MiB, repacked weights {buffers['repack'] / 2**20:.2f} MiB")
    applied, compute = {}, {}
    for x in layer_inventory(model):
        s = schemes.get(x.fqn, FP32)
        applied[x.fqn] = s.name
        if x.kind == "linear":
            t = gguf_type(s, x.fqn)
            compute[s.name] = LINEAR_INT8_DYNAMIC if t.activations == "Q8_0" else \
                LINEAR_FP16 if t.activations == "F16" else LINEAR_FP32
    shape = LMShape.from_config(config.to_dict())
    return LoweredLM(
        model_file=out,
        runtime=runtime_name(),
        delegates_used=["cpu"],
        layer_schemes=applied,
        max_context=max_context,
        kv_cache_dtype=LM_MEMORY.kv_dtype,  # llama.cpp's default cache_type_k / cache_type_v
        kv_cache_bytes=kv_cache_bytes(shape, max_context, LM_MEMORY.kv_dtype),
        linear_compute=dict(sorted(compute.items())),
        delegation={"delegated_ops": {"cpu": len(written)}, "portable_op_count": 0,
                    "gguf_tensor_types": written, "logits": "last position",
                    "prefill": "whole prompt in one batch",
                    # what llama.cpp allocated when it created the context (its own report), held from the load on
                    "planned_activation_bytes": buffers["kv"] + buffers["compute"] + buffers["output"],
                    "llama_cpp_buffers": buffers},
    )
