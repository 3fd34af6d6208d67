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


def _as(raw, dtype):
    return np.ascontiguousarray(raw).view(dtype)


# ---- F32 ---------------------------------------------------------------------------------------
def dequantize_f32(blocks):
    return _as(blocks, np.float32).reshape(blocks.shape[0], -1)


def linear_f32(raw, x):
    return x @ _as(raw, np.float32).T


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
def dot_f16(row, x, lut):
    s = np.float32(0.0)
    for k in range(row.shape[0]):
        s += lut[row[k]] * x[k]
    return s


@njit(parallel=True)
def linear_f16(w, x, y, fmt, act, lut, aux):
    """y (T, R) = f16(x) (T, n) . W^T, w: the rows as uint16 bit patterns.  (The unused
    arguments give every kernel the same signature; see kernels.linear_blocks.)"""
    xh = np.empty_like(x)
    for t in range(x.shape[0]):
        for k in range(x.shape[1]):
            xh[t, k] = round_to_f16(x[t, k]) if act == 5 else x[t, k]
    for r in prange(w.shape[0]):
        for t in range(x.shape[0]):
            y[t, r] = dot_f16(w[r], xh[t], lut)


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


def _u16(raw):
    return raw.view(np.uint16)


FORMATS = [
    QuantFormat("F32", 0, 1, 4, "f32", dequantize_f32, linear_f32),
    QuantFormat("F16", 1, 1, 2, "f16", dequantize_f16, linear_f16_np, weight_view=_u16,
                kernel=linear_f16),
    QuantFormat("BF16", 30, 1, 2, "bf16", dequantize_bf16, linear_bf16),
]
