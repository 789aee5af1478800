"""What a decoder LLM costs on a device: KV-cache bytes, the prefill arena, and an
estimated decode speed from bytes moved per token. Everything here is an ESTIMATE from
the model's shape and the device profile, never a measurement.

- **KV cache** at ``context`` tokens: for every layer, K and V of shape
  ``(kv_heads, context, head_dim)`` in the cache dtype. ``kv_heads`` is the model's
  ``num_key_value_heads`` (grouped-query attention), ``head_dim`` its ``head_dim`` when the
  config sets one (Gemma) else ``hidden / heads``; layers of ``sliding_attention`` type hold
  at most ``sliding_window`` positions. Checked against the tensors transformers allocates
  for a ``StaticCache`` (``tests/test_llm_costs.py``).
- **Prefill arena**: the float32 activations alive at once while one prompt of ``tokens``
  runs through a layer (residual, normed input, Q/K/V, the attention scores and their
  softmax, the MLP's intermediate tensors), the largest stage, plus the output logits.
  A runtime that fuses attention (flash / blocked SDPA) needs less.
- **Decode speed** (one token at batch 1): a roofline over the whole step:
  ``seconds = max(bytes / bandwidth, flops / peak)``, where bytes are the weights read
  once per token (every linear incl. the output head, one embedding row) plus the KV cache
  read up to the current position and the new K/V written, and flops are 2 per weight MAC
  plus the attention's ``4 x heads x head_dim x position``. Bandwidth and peak are the
  device profile's theoretical figures (all cores), so the tokens/s is an UPPER BOUND:
  real runtimes reach part of the bandwidth.

>>> shape = LMShape.from_config(LLAMA_3_2_1B)
>>> kv_cache_bytes(shape, 2048, "float32") // 2**20
128
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from edgeq.errors import ConfigError

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}

# Shapes of public models (their config.json values), for estimates without the weights.
LLAMA_3_2_1B: dict[str, Any] = {
    "model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32,
    "num_key_value_heads": 8, "intermediate_size": 8192, "vocab_size": 128256, "tie_word_embeddings": True,
    "max_position_embeddings": 131072,
}
SMOLLM2_135M: dict[str, Any] = {
    "model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
    "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152, "tie_word_embeddings": True,
    "max_position_embeddings": 8192,
}
# Architectures whose MLP is two matrices (up, down) rather than gated (gate, up, down).
_UNGATED_MLP = ("gpt2", "gpt_neox", "gptj", "opt", "phi", "falcon", "bloom")


@dataclass(frozen=True)
class LMShape:
    """The sizes of a decoder LLM that memory and speed depend on."""

    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    gated_mlp: bool
    max_positions: int | None = None
    sliding_window: int | None = None
    layer_types: tuple[str, ...] = ()  # "full_attention" / "sliding_attention" per layer, when the config says

    @classmethod
    def from_config(cls, config: Any) -> "LMShape":
        """Read a transformers config (object or ``config.json`` dict), GPT-2's names included."""
        c = config if isinstance(config, dict) else config.to_dict()

        def first(*keys: str, default: Any = None) -> Any:
            for k in keys:
                if c.get(k) is not None:
                    return c[k]
            return default

        hidden = first("hidden_size", "n_embd", "d_model")
        layers = first("num_hidden_layers", "n_layer", "num_layers")
        heads = first("num_attention_heads", "n_head")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (hidden, layers, heads)):
            raise ConfigError("the model config lacks positive hidden_size / num_hidden_layers / "
                              "num_attention_heads", "pass a decoder LLM's config.json")
        kv_heads = first("num_key_value_heads", "n_head_kv", default=heads)
        head_dim = first("head_dim", default=hidden // heads)
        model_type = str(c.get("model_type") or "")
        intermediate = first("intermediate_size", "n_inner", "ffn_dim", default=4 * hidden)
        layer_types = tuple(c.get("layer_types") or ())
        return cls(model_type=model_type, hidden=hidden, layers=layers, heads=heads, kv_heads=int(kv_heads),
                   head_dim=int(head_dim), intermediate=int(intermediate), vocab=int(first("vocab_size")),
                   tied_embeddings=bool(c.get("tie_word_embeddings", True)),
                   gated_mlp=model_type not in _UNGATED_MLP,
                   max_positions=first("max_position_embeddings", "n_positions"),
                   sliding_window=c.get("sliding_window"), layer_types=layer_types)

    def cached_positions(self, layer: int, context: int) -> int:
        """Positions layer ``layer`` keeps in its cache at ``context`` tokens."""
        sliding = self.layer_types[layer] == "sliding_attention" if self.layer_types else False
        return min(context, self.sliding_window) if sliding and self.sliding_window else context

    def linears(self) -> list[tuple[str, int, int]]:
        """(name, out_features, in_features) of one layer's linears, then the output head."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        one = [("q", q, self.hidden), ("k", kv, self.hidden), ("v", kv, self.hidden), ("o", self.hidden, q)]
        if self.gated_mlp:
            one += [("gate", self.intermediate, self.hidden), ("up", self.intermediate, self.hidden),
                    ("down", self.hidden, self.intermediate)]
        else:
            one += [("up", self.intermediate, self.hidden), ("down", self.hidden, self.intermediate)]
        return [(f"layers.{i}.{n}", o, k) for i in range(self.layers) for n, o, k in one] + [
            ("lm_head", self.vocab, self.hidden)]


def _dtype_bytes(dtype: str) -> int:
    if dtype not in DTYPE_BYTES:
        raise ConfigError(f"unknown KV-cache dtype '{dtype}'", f"use one of {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


def kv_cache_bytes(shape: LMShape, context: int, dtype: str = "float32") -> int:
    """Bytes of the K and V caches of every layer at ``context`` tokens."""
    per_position = 2 * shape.kv_heads * shape.head_dim * _dtype_bytes(dtype)
    return sum(per_position * shape.cached_positions(i, context) for i in range(shape.layers))


def logits_bytes(shape: LMShape, positions: int) -> int:
    """Float32 logits of ``positions`` positions."""
    return positions * shape.vocab * 4


def prefill_arena_bytes(shape: LMShape, tokens: int, *, all_logits: bool = False) -> int:
    """Float32 activation bytes alive at the largest stage of a prefill of ``tokens``."""
    t, f = tokens, 4
    stream = 2 * t * shape.hidden * f  # the residual stream and the normed copy the block reads
    qkv = t * (shape.heads + 2 * shape.kv_heads) * shape.head_dim * f
    attention = stream + qkv + 2 * shape.heads * t * t * f + t * shape.heads * shape.head_dim * f
    mlp = stream + (3 if shape.gated_mlp else 1) * t * shape.intermediate * f
    logits = logits_bytes(shape, t if all_logits else 1)
    return max(attention, mlp) + logits


def weight_bytes(shape: LMShape, linear_scheme: str = "int4-g32", head_scheme: str | None = None,
                 embedding_scheme: str = "fp32", fmt: str = "executorch") -> dict[str, int]:
    """Stored bytes of the linears, the output head and the embedding table, from the cost
    table of the ``fmt`` backend. A tied head is counted as its own copy: it is quantized
    apart from the embedding table."""
    from edgeq.backends import get_backend
    from edgeq.schemes import parse

    stored_bytes = get_backend(fmt).stored_bytes

    def layer(out: int, inp: int, kind: str = "linear") -> Any:
        return SimpleNamespace(params=out * inp, shape=(out, inp), kind=kind)

    lin, head = parse(linear_scheme), parse(head_scheme or linear_scheme)
    body = sum(stored_bytes(layer(o, k), lin) for n, o, k in shape.linears() if n != "lm_head")
    return {"linears": body, "lm_head": stored_bytes(layer(shape.vocab, shape.hidden), head),
            "embedding": stored_bytes(layer(shape.vocab, shape.hidden, "embedding"), parse(embedding_scheme)),
            "norms": 4 * shape.hidden * (2 * shape.layers + 1)}


@dataclass(frozen=True)
class DecodeEstimate:
    """One decode step's roofline on a device. ``tokens_per_s`` is an upper bound."""

    device: str
    bytes_per_token: int
    flops_per_token: int
    memory_s: float
    compute_s: float
    threads: int

    @property
    def seconds(self) -> float:
        return max(self.memory_s, self.compute_s)

    @property
    def tokens_per_s(self) -> float:
        return 1.0 / self.seconds

    @property
    def bound(self) -> str:
        return "memory" if self.memory_s >= self.compute_s else "compute"


def decode_estimate(shape: LMShape, profile: Any, *, position: int, linear_scheme: str = "int4-g32",
                    head_scheme: str | None = None, compute_dtype: str = "int8", kv_dtype: str = "float32",
                    threads: int | None = None, fmt: str = "executorch",
                    weights: dict[str, int] | None = None) -> DecodeEstimate:
    """Estimated decode step with ``position`` tokens already in the cache, on ``profile``
    (an ``edgeq.targets.schema.DeviceProfile``) with ``threads`` CPU threads (default: all cores).
    8da4w is ``linear_scheme="int4-g32", compute_dtype="int8"``. ``weights`` (the keys of
    ``weight_bytes``) replaces the uniform schemes, e.g. with an artifact's per-layer bytes."""
    from edgeq.profiling.emulate import cpu_share

    w = weights if weights is not None else weight_bytes(shape, linear_scheme, head_scheme, fmt=fmt)
    row = w["embedding"] // shape.vocab  # one embedding row is read per token
    kv_read = kv_cache_bytes(shape, position, kv_dtype)
    kv_write = kv_cache_bytes(shape, 1, kv_dtype)
    moved = w["linears"] + w["lm_head"] + w["norms"] + row + kv_read + kv_write
    macs = sum(o * k for _, o, k in shape.linears())
    attended = sum(shape.cached_positions(i, position + 1) for i in range(shape.layers))
    flops = 2 * macs + 4 * shape.heads * shape.head_dim * attended
    used = min(threads or profile.cpu.cores, profile.cpu.cores)
    peak = profile.cpu.peak_gops.get(compute_dtype, profile.cpu.peak_gops["fp32"]) * 1e9 * cpu_share(profile, used)
    return DecodeEstimate(device=profile.name, bytes_per_token=moved, flops_per_token=flops,
                          memory_s=moved / (profile.memory.bandwidth_gbps * 1e9), compute_s=flops / peak,
                          threads=used)
