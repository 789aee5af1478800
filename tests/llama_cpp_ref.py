"""llama.cpp's own quantizer and CPU dot products, called in the installed ``xllamacpp``
extension with ctypes: the independent reference the GGUF backend's bytes and stand-in
numerics are checked against (tests only; xllamacpp exports ggml's C API)."""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path
from typing import Any

import numpy as np


class _TypeTraitsCpu(ctypes.Structure):  # ggml-cpu.h: struct ggml_type_traits_cpu
    _fields_ = [("from_float", ctypes.c_void_p), ("vec_dot", ctypes.c_void_p), ("vec_dot_type", ctypes.c_int),
                ("nrows", ctypes.c_int64)]


_VEC_DOT = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t, ctypes.c_void_p,
                            ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_FROM_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


@functools.lru_cache(maxsize=1)
def lib() -> Any:
    import xllamacpp

    so = next(Path(xllamacpp.__file__).parent.glob("xllamacpp*.so"))
    handle = ctypes.CDLL(str(so))
    handle.ggml_quantize_chunk.restype = ctypes.c_size_t
    handle.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                           ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    handle.ggml_get_type_traits_cpu.restype = ctypes.POINTER(_TypeTraitsCpu)
    handle.ggml_get_type_traits_cpu.argtypes = [ctypes.c_int]
    handle.ggml_cpu_init()
    return handle


def _sizes(type_name: str) -> tuple[int, int, int]:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    t = GGMLQuantizationType[type_name]
    return int(t), *GGML_QUANT_SIZES[t]


def quantize(array: np.ndarray, type_name: str) -> np.ndarray:
    """``array`` (rows x K) as llama.cpp's quantizer writes it without an importance matrix
    (``ggml_quantize_chunk``, what ``llama_model_quantize`` runs per tensor)."""
    a = np.ascontiguousarray(array, dtype=np.float32)
    rows, k = a.shape
    tid, block, nbytes = _sizes(type_name)
    out = np.zeros((rows, k // block * nbytes), dtype=np.uint8)
    lib().ggml_quantize_chunk(tid, a.ctypes.data, out.ctypes.data, 0, rows, k, None)
    return out


def matmul(weight_bytes: np.ndarray, type_name: str, x: np.ndarray) -> np.ndarray:
    """``x`` (n x K) times the ``type_name`` weight (rows of bytes) as llama.cpp's CPU backend
    computes it: ``x`` converted to the type's ``vec_dot_type`` by its ``from_float``, then the
    type's ``vec_dot`` per (input row, weight row). Returns n x rows float32."""
    tid, block, nbytes = _sizes(type_name)
    traits = lib().ggml_get_type_traits_cpu(tid).contents
    dot_name = _type_name(traits.vec_dot_type)
    _, dblock, dbytes = _sizes(dot_name)
    from_float = ctypes.cast(ctypes.c_void_p(lib().ggml_get_type_traits_cpu(traits.vec_dot_type).contents.from_float),
                             _FROM_FLOAT)
    vec_dot = ctypes.cast(ctypes.c_void_p(traits.vec_dot), _VEC_DOT)
    x = np.ascontiguousarray(x, dtype=np.float32)
    k = x.shape[1]
    w = np.ascontiguousarray(weight_bytes, dtype=np.uint8)
    out = np.zeros((x.shape[0], w.shape[0]), dtype=np.float32)
    acc = ctypes.c_float()
    for i, row in enumerate(x):
        xq = np.zeros(k // dblock * dbytes, dtype=np.uint8)
        from_float(row.ctypes.data, xq.ctypes.data, k)
        for j in range(w.shape[0]):
            vec_dot(k, ctypes.byref(acc), 0, w[j].ctypes.data, 0, xq.ctypes.data, 0, 1)
            out[i, j] = acc.value
    return out


def _type_name(tid: int) -> str:
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType(tid).name
