"""An ``LMSession`` over an ONNX decoder LLM in ONNX Runtime (see ``llm.py`` for the graph).

Two cache layouts, as the model's ``edgeq.lm`` metadata says (``kv_cache``):

- ``"shared"`` (every layer's attention is one GroupQueryAttention): each layer's K and V
  are one ONNX Runtime buffer of ``max_context`` positions, bound with IO binding as both
  ``past.i.*`` and ``present.i.*``; a call writes only its new positions, in place, and
  the session feeds the cache length (``seqlens_k``, ``total_sequence_length``).
- ``"concat"`` (any other graph): the cache lives between calls as numpy arrays, the
  ``present.*`` outputs (the past with the new positions concatenated) fed back as
  ``past.*`` inputs.

``prefill`` runs the whole prompt in one call from an empty cache; ``decode`` feeds one token. The model file is untrusted input: its ``edgeq.lm``
metadata is checked against the graph's own inputs and outputs before use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeq.backends.lm_meta import read_lm_meta
from edgeq.errors import ArtifactError, RunError, describe
from edgeq.hostcpu import idle_cpus, usable_cpus

_MAX_LAYERS = 4096
KV_SHARED, KV_CONCAT = "shared", "concat"  # the edgeq.lm metadata's "kv_cache" (absent: concat)


class OnnxLMSession:
    """One conversation's decoder state in ONNX Runtime (``edgeq.llm.session.LMSession``)."""

    def __init__(self, session: Any, meta: dict[str, Any], runtime: str) -> None:
        self._session = session
        self.max_context: int = meta["max_context"]
        self.vocab_size: int = meta["vocab_size"]
        self.runtime = runtime
        self._layers: int = meta["num_layers"]
        self._kv_shape = (1, meta["kv_heads"], 0, meta["head_dim"])
        self._past_names = [f"past.{i}.{kv}" for i in range(self._layers) for kv in ("key", "value")]
        self._cache: list[Any] = []
        self._length = 0
        self._binding: Any = None
        if meta.get("kv_cache") == KV_SHARED:
            self._bind_shared_cache()
        self.reset()

    def _bind_shared_cache(self) -> None:
        """One buffer of ``max_context`` positions per layer's K and V, bound as its past and
        its present: ONNX Runtime's GroupQueryAttention sees the same memory and writes the new
        positions in place."""
        import numpy as np
        import onnxruntime as ort

        shape = (1, self._kv_shape[1], self.max_context, self._kv_shape[3])
        self._binding = self._session.io_binding()
        self._binding.bind_output("logits", "cpu")  # first: get_outputs() lists outputs in binding order
        for name in self._past_names:
            buffer = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, "cpu", 0)
            self._cache.append(buffer)
            self._binding.bind_ortvalue_input(name, buffer)
            self._binding.bind_ortvalue_output(name.replace("past.", "present.", 1), buffer)

    @property
    def length(self) -> int:
        """Tokens held in the cache."""
        return self._length

    def reset(self) -> None:
        import numpy as np

        if self._binding is None:
            self._cache = [np.zeros(self._kv_shape, dtype=np.float32) for _ in self._past_names]
        # a shared buffer keeps its stale positions: the attention reads only the first
        # total_sequence_length of them, and a prompt from an empty cache writes from position 0
        self._length = 0

    def prefill(self, token_ids: list[int], *, all_logits: bool = False) -> Any:
        """Start from an empty cache and feed the whole prompt in one run."""
        self.reset()
        if len(token_ids) == 0:
            raise RunError("the prompt has no tokens", "give a non-empty prompt")
        logits = self._feed(list(token_ids))
        return logits if all_logits else logits[-1]

    def decode(self, token_id: int) -> Any:
        """Append one token; return the next token's logits."""
        return self._feed([token_id])[-1]

    def close(self) -> None:
        self._session = None
        self._binding = None
        self._cache = []

    def _feed(self, ids: list[int]) -> Any:
        import numpy as np

        if self._session is None:
            raise RunError("the session is closed", "open the artifact again")
        if self._length + len(ids) > self.max_context:
            raise RunError(f"{self._length + len(ids)} tokens exceed the artifact's max context of {self.max_context}",
                           "shorten the prompt or lower --max-new-tokens, or re-export with a larger --max-context")
        array = np.asarray(ids, dtype=np.int64).reshape(1, -1)
        if array.min() < 0 or array.max() >= self.vocab_size:
            raise RunError(f"token id {int(array.max() if array.max() >= self.vocab_size else array.min())} "
                           f"is outside the vocabulary of {self.vocab_size}", "use the artifact's own tokenizer")
        try:
            if self._binding is not None:
                logits = self._run_shared(array)
            else:
                outputs = self._session.run(None, {"input_ids": array, **dict(zip(self._past_names, self._cache))})
                self._cache, logits = outputs[1:], outputs[0]
        except Exception as exc:
            raise RunError(f"ONNX Runtime failed to run the LM: {describe(exc, 200)}",
                           "re-export the artifact; re-run with --debug for details") from exc
        self._length += len(ids)
        return np.ascontiguousarray(logits[0], dtype=np.float32)

    def _run_shared(self, array: Any) -> Any:
        import numpy as np

        from edgeq.backends.onnx.llm_attention import SEQLENS_K, TOTAL_LENGTH

        total = self._length + array.shape[1]
        b = self._binding
        b.bind_cpu_input("input_ids", array)
        b.bind_cpu_input(SEQLENS_K, np.array([total - 1], dtype=np.int32))
        b.bind_cpu_input(TOTAL_LENGTH, np.array(total, dtype=np.int32))
        b.bind_output("logits", "cpu")  # ORT allocates it at this call's shape
        self._session.run_with_iobinding(b)
        return b.get_outputs()[0].numpy()


def open_lm(artifact_dir: Path | str, model_file: Path | str | None = None, *, threads: int = 0) -> OnnxLMSession:
    """Open an ONNX LLM written by ``lower_lm``: ``open_lm(model_file)`` or
    ``open_lm(artifact_dir, model_file)`` (``model_file`` relative to ``artifact_dir``)."""
    import onnxruntime as ort

    path = Path(artifact_dir) if model_file is None else Path(artifact_dir) / model_file
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist", "give an artifact directory written by 'edgeq export --format onnx'")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    spin = spin_threads(threads or len(usable_cpus()), idle_cpus())
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    opts.add_session_config_entry("session.force_spinning_stop", "1")  # never between steps
    try:
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ArtifactError(f"ONNX Runtime cannot load {path}: {describe(exc, 200)}",
                            "the file is corrupt or not an ONNX model; re-run 'edgeq export'") from None
    meta = _read_meta(session, path)
    return OnnxLMSession(session, meta, f"ONNX Runtime {ort.__version__} (CPUExecutionProvider, "
                                        f"threads {'spin' if spin else 'sleep'} between kernels)")


def spin_threads(threads: int, idle: float | None) -> bool:
    """Whether ONNX Runtime's intra-op threads should spin between a step's kernels.

    A decode step is hundreds of short kernels: threads that spin between them instead of
    sleeping are about a third faster when they have cores to themselves, and about a third
    slower when another process needs those cores (measured on SmolLM2-135M int4, 2 threads
    on 2 vCPUs, spinning within steps only: idle host 142-166 tokens/s spinning vs 106-127
    sleeping; one busy process beside it 62-83 vs 91-128). So: spin only if the CPUs were
    idle for every thread when the session opened (half a core of slack for this process's
    own work); unknown: sleep.
    Spinning stops between steps either way (``session.force_spinning_stop``)."""
    return idle is not None and idle >= threads - 0.5


def _read_meta(session: Any, path: Path) -> dict[str, Any]:
    """The ``edgeq.lm`` metadata, checked field by field and against the graph."""
    from edgeq.backends.onnx.llm import LM_META_KEY, LM_META_VERSION

    hint = "re-export it with 'edgeq export --format onnx' from a causal LM"
    meta = read_lm_meta(session.get_modelmeta().custom_metadata_map.get(LM_META_KEY), path, LM_META_KEY,
                        LM_META_VERSION, {"max_context": (1, 1 << 24), "num_layers": (1, _MAX_LAYERS),
                                          "vocab_size": (1, 1 << 24), "kv_heads": (1, 1 << 12),
                                          "head_dim": (1, 1 << 14)}, hint)
    layers = meta["num_layers"]
    if meta.get("kv_cache", KV_CONCAT) not in (KV_SHARED, KV_CONCAT):
        raise ArtifactError(f"{path}'s {LM_META_KEY} metadata has a bad 'kv_cache': {str(meta['kv_cache'])[:40]!r}", hint)
    from edgeq.backends.onnx.llm_attention import SEQLENS_K, TOTAL_LENGTH

    lengths = [SEQLENS_K, TOTAL_LENGTH] if meta.get("kv_cache") == KV_SHARED else []
    want_in = ["input_ids"] + lengths + [f"past.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    want_out = ["logits"] + [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    if [i.name for i in session.get_inputs()] != want_in or [o.name for o in session.get_outputs()] != want_out:
        raise ArtifactError(f"{path}'s inputs and outputs are not those of a {layers}-layer edgeq LLM", hint)
    return meta
