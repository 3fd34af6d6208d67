"""Unquantized weights: F32, F16, BF16 (one element per "block").

    F32:   4 bytes, IEEE single          w = bits as float32
    F16:   2 bytes, IEEE half            w = half -> float32 (exact)
    BF16:  2 bytes, top half of a float32 w = bits << 16 as float32 (exact)

llama.cpp rounds activations to the weight's own type for F16 and BF16 and
accumulates in float32; F32 uses x as is, so F32 simply goes to numpy's BLAS.
"""

from __future__ import annotations

import numpy as np

from ..jit import FASTMATH, njit, prange
from .activations import round_to_f16, to_bf16_np, to_f16_np
from .common import QuantFormat, row_chunks
from .rows import ACT_OWN_TYPE


def _as(raw, dtype):
    return np.ascontiguousarray(raw).view(dtype)


# ---- F32 ---------------------------------------------------------------------------------------
def dequantize_f32(blocks):
    return _as(blocks, np.float32).reshape(blocks.shape[0], -1)


def linear_f32(raw, x):
    return x @ _as(raw, np.float32).T


@njit(fastmath=FASTMATH)
def dot_f32(row, x):
    s = np.float32(0.0)
    for k in range(row.shape[0]):
        s += row[k] * x[k]
    return s


@njit(parallel=True)
def matvec_f32(w0, w1, w2, x, y, lut):
    """y (R0+R1+R2,) = [W0; W1; W2] (R, n) . x (n,), the F32 rows.  A decode step on numba's
    threads: through numpy, BLAS brings a second pool of threads to the same cores, and
    with numba's pool still spinning after the step's other kernels, SmolLM2 F32 decoded
    at 3.8 tok/s.  (The signature is every matvec's, rows.matvec_rows; lut is unused.)"""
    r1, r2 = w0.shape[0], w0.shape[0] + w1.shape[0]
    for r in prange(r2 + w2.shape[0]):
        if r < r1:
            y[r] = dot_f32(w0[r], x)
        elif r < r2:
            y[r] = dot_f32(w1[r - r1], x)
        else:
            y[r] = dot_f32(w2[r - r2], x)


# ---- F16 ---------------------------------------------------------------------------------------
def dequantize_f16(blocks):
    return _as(blocks, np.float16).astype(np.float32).reshape(blocks.shape[0], -1)


def linear_f16_np(raw, x):
    x = to_f16_np(x)
    w = _as(raw, np.float16)
    out = np.empty((x.shape[0], w.shape[0]), np.float32)
    for r0, r1 in row_chunks(w.shape[0], w.shape[1], x.shape[0]):
        out[:, r0:r1] = x @ w[r0:r1].astype(np.float32).T
    return out


@njit(fastmath=FASTMATH)
def dot_half(row, x, table):
    """row: uint16 bit patterns, each looked up in a 65536-entry table of float32 values"""
    s = np.float32(0.0)
    for k in range(row.shape[0]):
        s += table[row[k]] * x[k]
    return s


@njit
def round_to_bf16(v):
    """float32 -> the nearest bfloat16 (ties to even), as float32 (what llama.cpp's
    activations become before a BF16 dot).  NaN stays NaN."""
    u = np.uint32(np.array([v], np.float32).view(np.uint32)[0])
    if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return v
    r = (np.uint64(u) + np.uint64(0x7FFF) + np.uint64((u >> np.uint32(16)) & np.uint32(1))) >> np.uint64(16)
    return np.array([np.uint32(r) << np.uint32(16)], np.uint32).view(np.float32)[0]


@njit(inline="always")
def linear_half(w, x, y, rounded, round_x, table):
    """y (T, R) = x (T, n) . W^T for F16 or BF16 weights, w: the rows as uint16 bit
    patterns, table: their float32 values.  rounded: x is first rounded to the weight's
    own type (round_x), as llama.cpp does."""
    xh = np.empty_like(x)
    for t in range(x.shape[0]):
        for k in range(x.shape[1]):
            xh[t, k] = round_x(x[t, k]) if rounded else x[t, k]
    for r in prange(w.shape[0]):
        for t in range(x.shape[0]):
            y[t, r] = dot_half(w[r], xh[t], table)


@njit(parallel=True)
def prefill_f16(w, x, y, act, lut, aux):
    """(The signature is every prefill kernel's: lut is f16 -> f32.)"""
    linear_half(w, x, y, act == ACT_OWN_TYPE, round_to_f16, lut)


@njit(parallel=True)
def prefill_bf16(w, x, y, act, lut, aux):
    """(aux: bf16 -> f32.)"""
    linear_half(w, x, y, act == ACT_OWN_TYPE, round_to_bf16, aux)


# ---- BF16 --------------------------------------------------------------------------------------
def dequantize_bf16(blocks):
    bits = _as(blocks, np.uint16).astype(np.uint32) << 16
    return bits.view(np.float32).reshape(blocks.shape[0], -1)


def linear_bf16(raw, x):
    x = to_bf16_np(x)
    w = _as(raw, np.uint16)
    out = np.empty((x.shape[0], w.shape[0]), np.float32)
    for r0, r1 in row_chunks(w.shape[0], w.shape[1], x.shape[0]):
        wf = (w[r0:r1].astype(np.uint32) << 16).view(np.float32)
        out[:, r0:r1] = x @ wf.T
    return out


# bf16 bit pattern -> float32, all 65536 of them (256 KiB): a bf16 is the top half of a float32
BF16_TO_F32 = (np.arange(65536, dtype=np.uint32) << 16).view(np.float32)


def _u16(raw):
    return raw.view(np.uint16)


def _f32(raw):
    return raw.view(np.float32)


FORMATS = [
    QuantFormat("F32", "f32", dequantize_f32, linear_f32, weight_view=_f32, matvec_float=matvec_f32),
    QuantFormat("F16", "f16", dequantize_f16, linear_f16_np, weight_view=_u16, prefill=prefill_f16),
    QuantFormat("BF16", "bf16", dequantize_bf16, linear_bf16, weight_view=_u16, prefill=prefill_bf16,
                aux=BF16_TO_F32),
]
