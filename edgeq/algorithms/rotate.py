"""Rotation of a decoder LLM's residual stream by an orthogonal matrix (QuaRot-style).

A Llama-style decoder adds every block's output to one residual stream, and a few of its
channels carry values far larger than the rest. Every quantized linear that reads the
stream (q/k/v, gate/up, the LM head, each behind an RMSNorm) rounds its input to int8 per
token, so those few channels set the step for all the others. An orthogonal ``Q`` spreads
them over every channel, and the model computes the same function in fp32 once:

- each RMSNorm's weight ``γ`` is folded into the columns of the linears that read it (the
  norm then computes ``normalized(x)``, and ``‖xQ‖ = ‖x‖``, so it commutes with ``Q``);
- the embedding table becomes ``E Q`` (the stream is carried rotated from its start);
- the linears that read the stream get ``W ← W Q``;
- the linears that write it (o_proj, down_proj) get ``W ← Qᵀ W`` (and a bias ``b ← b Q``);
- the LM head gets the final norm's ``γ`` and ``Q`` as its own copy: a tied table becomes
  two matrices, which ExecuTorch stores anyway (``Backend.LM_ROTATES`` says which formats do).

No op is added. ``Q`` is a random orthogonal matrix from a fixed seed (the QR of a Gaussian
matrix, signs made unique), so an export is reproducible; the manifest records it. Only the
structures listed in ``STRUCTURES`` are rotated (Gemma's ``(1 + γ)`` norms and its norms on
block outputs do not commute with ``Q``); for any other, ``not_rotatable`` says why. The
rotated model is checked to compute the model's own logits in fp32 (tests/test_rotate.py).
"""

from __future__ import annotations

import copy
from typing import Any

REVISION = 1
SEED = 0
# RMSNorms that compute ``γ * normalized(x)`` (Gemma's ``(1 + γ) * ...`` is not among them).
NORMS = ("LlamaRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "MistralRMSNorm", "Phi3RMSNorm", "SmolLM3RMSNorm")
# A decoder layer whose forward is ``h += attn(input_layernorm(h)); h += mlp(post_attention_layernorm(h))``:
# its readers of the stream (behind each norm) and its writers, by attribute path.
STRUCTURES = {
    "split": (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("mlp.gate_proj", "mlp.up_proj"),
              ("self_attn.o_proj", "mlp.down_proj")),
    "packed": (("self_attn.qkv_proj",), ("mlp.gate_up_proj",), ("self_attn.o_proj", "mlp.down_proj")),
}
MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "smollm3")


def _get(module: Any, path: str) -> Any:
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def _layout(module: Any) -> tuple[Any, Any, Any, list[tuple[Any, tuple, tuple, tuple]]] | str:
    """``(table, final norm, head, [(layer, attention readers, mlp readers, writers)])`` of a
    rotatable ``module``, or the reason it is not."""
    from torch import nn

    config = getattr(module, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_TYPES:
        return f"a {model_type or type(module).__name__} decoder (rotation covers {', '.join(MODEL_TYPES)})"
    inner = getattr(module, "model", None)
    table = module.get_input_embeddings() if hasattr(module, "get_input_embeddings") else None
    head = module.get_output_embeddings() if hasattr(module, "get_output_embeddings") else None
    final = getattr(inner, "norm", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(table, nn.Embedding) or not isinstance(head, nn.Linear) or final is None or not layers:
        return "no embedding table, final norm, decoder layers and linear head where a causal LM keeps them"
    if type(final).__name__ not in NORMS:
        return f"its final norm is a {type(final).__name__}"
    out = []
    for i, layer in enumerate(layers):
        norms = [n for n, m in layer.named_children() if "norm" in n.lower()]
        if sorted(norms) != ["input_layernorm", "post_attention_layernorm"]:
            return f"layer {i} has norms {norms} (only a pre-norm block is rotated)"
        if any(type(getattr(layer, n)).__name__ not in NORMS for n in norms):
            return f"layer {i}'s norm is a {type(layer.input_layernorm).__name__}"
        for attn_in, mlp_in, writers in STRUCTURES.values():
            linears = [_get(layer, p) for p in (*attn_in, *mlp_in, *writers)]
            if all(isinstance(m, nn.Linear) for m in linears):
                n_a, n_m = len(attn_in), len(mlp_in)
                out.append((layer, tuple(linears[:n_a]), tuple(linears[n_a:n_a + n_m]), tuple(linears[n_a + n_m:])))
                break
        else:
            return f"layer {i}'s linears are not laid out as q/k/v, o, gate/up, down"
    return table, final, head, out


def not_rotatable(module: Any) -> str:
    """Why ``module`` (a transformers ``*ForCausalLM``) is not rotated, or ``""``."""
    found = _layout(module)
    return found if isinstance(found, str) else ""


def orthogonal(size: int, seed: int = SEED) -> Any:
    """A random orthogonal ``size`` × ``size`` matrix (float64), the same for the same seed."""
    import torch

    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(size, size, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


ROWS = 4096  # rows of a weight rotated at a time


def rotated(module: Any, seed: int = SEED) -> tuple[Any, dict[str, Any]]:
    """A copy of ``module`` with its residual stream rotated (``not_rotatable`` must be ``""``),
    and the manifest's record of it."""
    import torch

    found = _layout(module)
    if isinstance(found, str):
        raise ValueError(f"cannot rotate: {found}")
    out = copy.deepcopy(module)
    table, final, head, layers = _layout(out)
    q = orthogonal(table.weight.shape[1], seed)

    def times_q(w: Any, gamma: Any = None) -> Any:
        """``(w * gamma) @ q`` in float64, a block of rows at a time: a 128k-row table's
        float64 temporaries would be GBs at once."""
        turned = torch.empty_like(w)
        for i in range(0, w.shape[0], ROWS):
            block = w[i:i + ROWS].double()
            turned[i:i + ROWS] = ((block if gamma is None else block * gamma) @ q).to(w.dtype)
        return torch.nn.Parameter(turned, requires_grad=False)

    def read(norm: Any, linears: tuple[Any, ...]) -> None:
        gamma = norm.weight.detach().double()
        for lin in linears:
            lin.weight = times_q(lin.weight.detach(), gamma)
        norm.weight.data.fill_(1.0)

    def write(lin: Any) -> None:
        lin.weight = torch.nn.Parameter((q.T @ lin.weight.detach().double()).to(lin.weight.dtype), requires_grad=False)
        if lin.bias is not None:
            lin.bias = torch.nn.Parameter((lin.bias.detach().double() @ q).to(lin.bias.dtype), requires_grad=False)

    with torch.no_grad():
        tied = head.weight is table.weight
        table.weight = times_q(table.weight.detach())
        if tied:
            # the source's table, read (not written) by the head's rotation below, which replaces it
            head.weight = torch.nn.Parameter(module.get_output_embeddings().weight.detach(), requires_grad=False)
        for layer, attn_in, mlp_in, writers in layers:
            read(layer.input_layernorm, attn_in)
            read(layer.post_attention_layernorm, mlp_in)
            for lin in writers:
                write(lin)
        read(final, (head,))
    if tied:
        for config in {id(c): c for c in (out.config, out.config.get_text_config())}.values():
            config.tie_word_embeddings = False  # the head now holds its own rotated copy
    record = {"method": "orthogonal rotation of the residual stream", "revision": REVISION,
              "matrix": f"random orthogonal {q.shape[0]}x{q.shape[0]} (QR of a Gaussian, seed {seed})",
              "head": "own copy (was tied to the table)" if tied else "own"}
    return out, record


CALIB_SEQUENCES = 4  # calibration sequences (of up to smooth.SEQUENCE tokens) the choice is measured on


def plan_kl(model: Any, reference: Any, schemes: dict[str, Any], backend: Any, rows: list[tuple[Any, ...]],
            next_token_kl: Any) -> float:
    """Mean next-token KL (nats) of ``model`` with every quantized layer of ``schemes`` (HF
    names) replaced by ``backend``'s stand-in at its scheme, against the fp32 ``reference``'s
    distributions, over ``rows`` (token sequences); ``next_token_kl(ref_logits, logits)`` is
    the LLM path's measure (``edgeq.llm.perplexity.next_token_kl``). The stand-ins are swapped
    into ``model`` for its forward and the layers put back after each (``model`` may be
    ``reference``): no copy of the whole model beside them (a 1B model's is 5 GB)."""
    import torch

    total = 0.0
    with backend.lm_numerics():
        swaps = [(mod, child_name, child, backend.stand_in(child, s))
                 for name, mod in model.named_modules() for child_name, child in mod.named_children()
                 if (s := schemes.get(f"{name}.{child_name}" if name else child_name)) is not None
                 and s.is_quantized and isinstance(child, torch.nn.Linear | torch.nn.Embedding)]
        with torch.no_grad():
            for row in rows:
                ref = reference(row[0]).logits[0].float().numpy()
                try:
                    for mod, child_name, _, q in swaps:
                        setattr(mod, child_name, q)
                    logits = model(row[0]).logits[0].float().numpy()
                finally:
                    for mod, child_name, layer, _ in swaps:
                        setattr(mod, child_name, layer)
                total += next_token_kl(ref, logits)
    return total / max(len(rows), 1)


class PlanRotation:
    """Rotation for one export: per plan, whether the rotated model's stand-ins reproduce the
    fp32 model's next-token distributions on the calibration text better than the model's
    own (mean KL); the module to lower from and the manifest's record (``llm.rotation``)."""

    def __init__(self, loaded: Any, model: Any, backend: Any, steps: Any, next_token_kl: Any) -> None:
        self.loaded, self.model, self.backend, self.steps = loaded, model, backend, steps
        self.next_token_kl = next_token_kl
        self.why_not = not_rotatable(model)
        self._rotated: tuple[Any, dict[str, Any]] | None = None
        self._rows: list[tuple[Any, ...]] | None = None
        self._chosen: dict[Any, dict[str, Any]] = {}
        self._noted: set[str] = set()

    def _note(self, line: str) -> None:
        if line not in self._noted:
            self._noted.add(line)
            self.steps.note(line)

    def apply(self, plan: Any, last: bool = False) -> tuple[Any, dict[str, Any] | None]:
        """``last``: no other plan follows, so the rotated copy is handed to the caller when
        chosen and dropped when not (a 1B model's is 5 GB)."""
        found = self._apply(plan)
        if last:
            self._rotated = None
        return found

    def _apply(self, plan: Any) -> tuple[Any, dict[str, Any] | None]:
        from edgeq.algorithms.calibrated import calibration_source

        schemes = plan.schemes
        if not any(s.is_quantized for s in schemes.values()):
            return self.model, None
        if self.why_not:
            self._note(f"no rotation of the residual stream: {self.why_not}")
            return self.model, None
        calibrated = sorted(f for f, s in schemes.items() if s.is_quantized and s.algorithm != "rtn")
        if calibrated:
            self._note(f"no rotation of the residual stream: {calibrated[0]} is {schemes[calibrated[0]].name} "
                       "(its values are computed for the unrotated weights)")
            return self.model, None
        source = calibration_source(self.loaded)
        if source is None:
            self._note("no rotation of the residual stream: the model has no calibration text (pass --calib)")
            return self.model, None
        key = tuple(sorted((f, s.name) for f, s in schemes.items()))
        if key not in self._chosen:
            self._chosen[key] = self._measure(schemes, source)
        record = self._chosen[key]
        return (self._rotated[0] if record["applied"] else self.model), record

    def _measure(self, schemes: dict[str, Any], source: Any) -> dict[str, Any]:
        from edgeq.algorithms.calibrated import LM_CALIB_SAMPLES
        from edgeq.algorithms.smooth import joined

        with self.steps.step("Rotation of the residual stream (calibration text)") as info:
            if self._rotated is None:
                self._rotated = rotated(self.model)
                self._rows = joined(self.loaded.make_inputs("calib", LM_CALIB_SAMPLES))[:CALIB_SEQUENCES]
            plain = plan_kl(self.model, self.model, schemes, self.backend, self._rows, self.next_token_kl)
            turned = plan_kl(self._rotated[0], self.model, schemes, self.backend, self._rows, self.next_token_kl)
            applied = turned < plain
            info.detail = (f"next-token KL {turned:.4f} rotated vs {plain:.4f} not: "
                           f"{'rotated' if applied else 'not rotated'}")
        return {**self._rotated[1], "applied": applied, "calibration": source,
                "tokens": sum(int(r[0].numel()) for r in self._rows),
                "kl_rotated": round(turned, 6), "kl_unrotated": round(plain, 6)}
