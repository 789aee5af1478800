"""The native runner (``native-runner/``, C++ on ExecuTorch's Module API): build and run it.

``build_runner()`` configures and builds it with cmake + a C++17 compiler against the
installed executorch wheel (which ships the C++ runtime, kernel and XNNPACK libraries,
headers and its CMake package), into a cache directory keyed by the sources and the
executorch version, and returns the binary's path. ``run_runner()`` runs it on a bundle:
it verifies every file's sha256, checks the golden output within the bundle's tolerance,
and benchmarks, returning JSON in the shape of ``edgeq profile --json``.

The runner is ExecuTorch-only; ONNX bundles are checked by ONNX Runtime itself.

>>> from edgeq.bundle.native import build_runner, run_runner
>>> report = run_runner(build_runner(), "android-demo/app/src/main/assets/edgeq/minilm")  # doctest: +SKIP
>>> report["golden"]["ok"], report["latency_ms"]["p50"]  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from edgeq.errors import ArtifactError, BackendUnavailableError, EdgeqError

BINARY = "edgeq-runner"
EXIT_BAD_BUNDLE, EXIT_GOLDEN_MISMATCH = 2, 3


class GoldenMismatchError(EdgeqError):
    """The runtime's output on the golden input is outside the bundle's tolerance."""


def source_dir() -> Path:
    """``native-runner/`` of a source checkout (or the copy shipped inside the package)."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "_builtin" / "native-runner", here.parent / "native-runner"):
        if (candidate / "CMakeLists.txt").is_file():
            return candidate
    raise BackendUnavailableError("the native runner's sources (native-runner/) are not installed with edgeq",
                                  "use a source checkout of edgeq")


def _cache_root() -> Path:
    root = os.environ.get("EDGEQ_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgeq")
    return Path(root) / "native-runner"


def _executorch_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("executorch")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailableError("executorch is not installed here, and the native runner builds against it",
                                      "pip install executorch")
    root = Path(list(spec.submodule_search_locations)[0])
    if not (root / "share" / "cmake" / "executorch-config.cmake").is_file():
        raise BackendUnavailableError(f"the executorch package at {root} ships no CMake package (share/cmake)",
                                      "install an executorch wheel that ships its C++ runtime (1.5 or newer)")
    return root


def _build_key(src: Path, et_dir: Path) -> str:
    from importlib.metadata import version

    h = hashlib.sha256()
    for p in sorted(src.rglob("*")):
        if p.is_file() and p.suffix in (".cpp", ".h", ".txt"):
            h.update(p.relative_to(src).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    h.update(f"{version('executorch')}\0{et_dir}".encode())
    return h.hexdigest()[:20]


def build_runner(cache_dir: str | Path | None = None, *, force: bool = False, timeout: float = 900) -> Path:
    """Build ``edgeq-runner`` (once per source/executorch version) and return its path."""
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise BackendUnavailableError(f"{tool} is not installed, and the native runner is built with it",
                                          "apt-get install cmake g++")
    src, et_dir = source_dir(), _executorch_dir()
    root = Path(cache_dir) if cache_dir is not None else _cache_root()
    final = root / _build_key(src, et_dir)
    binary = final / BINARY
    if binary.is_file() and not force:
        return binary
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        steps = [["cmake", "-S", str(src), "-B", str(work / "build"), f"-DCMAKE_PREFIX_PATH={et_dir}",
                  "-DCMAKE_BUILD_TYPE=Release"],
                 ["cmake", "--build", str(work / "build"), "-j", str(max(1, min(4, os.cpu_count() or 1)))]]
        for cmd in steps:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            if proc.returncode != 0:
                tail = " ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])[-400:]
                raise BackendUnavailableError(f"building the native runner failed: {tail}",
                                              "check that cmake >= 3.19 and a C++17 g++ are installed")
        shutil.copy2(work / "build" / BINARY, work / BINARY)
        if force and final.exists():
            shutil.rmtree(final)
        shutil.rmtree(work / "build")
        try:
            os.rename(work, final)
        except OSError:  # built concurrently by another process: theirs is as good
            if not binary.is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return binary


def run_runner(binary: str | Path, bundle_dir: str | Path, *, runs: int = 20, warmup: int = 3,
               threads: int | None = None, timeout: float = 1800) -> dict[str, Any]:
    """Run the native runner on a bundle; its report (golden check + benchmark) as a dict."""
    fd, out = tempfile.mkstemp(prefix="edgeq-native-", suffix=".json")
    os.close(fd)
    cmd = [str(binary), str(bundle_dir), "--runs", str(runs), "--warmup", str(warmup), "--json-out", out]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        error = next((line[len("error: "):] for line in reversed(proc.stderr.splitlines()) if line.startswith("error: ")),
                     proc.stderr.strip()[-300:] or "no message")
        if proc.returncode == EXIT_BAD_BUNDLE:
            raise ArtifactError(f"the native runner rejected {bundle_dir}: {error}", "re-run 'edgeq bundle'")
        if proc.returncode == EXIT_GOLDEN_MISMATCH:
            raise GoldenMismatchError(error, "this runtime computes different numbers from the host's")
        if proc.returncode != 0:
            raise EdgeqError(f"the native runner failed on {bundle_dir} (exit {proc.returncode}): {error}",
                             "re-run with the runner directly to see its log")
        return json.loads(Path(out).read_text())
    finally:
        Path(out).unlink(missing_ok=True)
