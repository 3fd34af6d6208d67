"""Q8_0: 8-bit weights, one f16 scale per 32.

    block (34 bytes):  d f16 | qs[32] int8            w[i] = d * qs[i]

Activations are Q8_0 too, so a block's dot product is d_w * d_x * sum_i qs_w[i] qs_x[i]
(rows.matvec_q8_0_reference is that sum in plain Python).
"""

from __future__ import annotations

import numpy as np

from ..jit import FASTMATH, HAVE_NUMBA, njit
from .activations import linear_q8_0_act, round_away_np, x_q8_0
from .common import QuantFormat, f16_at, f16_bytes, f16_field, inverse, row_chunks
from .rows import (
    fetch_ahead4,
    matvec_rows,
    prefill_rows,
    prefill_rows_dot4,
    x_with_sums,
)

if HAVE_NUMBA:
    from .simd import bytes32, dot_signed, fma, hsum, zeros_f32x8
    from .simd import f16_at as f16_of

BLOCK, SIZE = 32, 34


# ---- numpy: the reference dequantizer and matmul ----------------------------------------------
def dequantize_blocks(blocks):
    """(n, 34) uint8 -> (n, 32) float32, bit-exact with gguf."""
    return blocks[:, 2:].view(np.int8).astype(np.float32) * f16_field(blocks, 0)[:, None]


def quantize_q8_0(x):
    """x (n, 32) float32 -> the blocks' bytes (n, 34), as llama.cpp's reference quantizer:
    d = max|x| / 127, q = roundf(x / d) (with 1/d the float32 before d is stored as f16)."""
    d = np.abs(x).max(axis=-1) / np.float32(127)
    q = round_away_np(x * inverse(d)[:, None])
    return np.concatenate([f16_bytes(d), q.astype(np.int8).view(np.uint8)], axis=-1)


def unpack(raw):
    """(R, row_bytes) -> q (R, nb, 32) float32 integers, d (R, nb)."""
    b = raw.reshape(-1, SIZE)
    q = b[:, 2:].view(np.int8).astype(np.float32).reshape(raw.shape[0], -1, BLOCK)
    return q, f16_field(b, 0).reshape(raw.shape[0], -1)


def linear_np(raw, x):
    n_cols = raw.shape[1] // SIZE * BLOCK
    return linear_q8_0_act(unpack, raw, x, row_chunks(raw.shape[0], n_cols, x.shape[0]))


# ---- prefill: one row -> float32 weights (rows.prefill_rows) ------------------------------------
@njit(inline="never")
def unpack_row(row, wf, gm, lut, aux):
    """wf (n,) = d * q: the row dequantized (bit-exact with dequantize_blocks)."""
    nb = row.shape[0] // SIZE
    bs = wf.shape[0] // nb              # 32, but known only at run time: see rows.py
    for b in range(nb):
        o = b * SIZE
        d = f16_at(row, o, lut)
        for k in range(bs):
            wf[b * bs + k] = np.float32(np.int8(row[o + 2 + k])) * d


# ---- decode: four rows' dot products with x (rows.matvec_rows) ------------------------------------
@njit(fastmath=FASTMATH, inline="never")
def dot4_int8(w0, w1, w2, w3, xr, lut):
    """x rounded to Q8_0 (xq, xd): per block, d_w d_x (q_w . q_x) in 8 int32 lanes (simd)."""
    xq, xd = xr
    a0, a1, a2, a3 = zeros_f32x8(), zeros_f32x8(), zeros_f32x8(), zeros_f32x8()
    for b in range(xd.shape[0]):
        o, xo, d = 34 * b, 32 * b, xd[b]
        fetch_ahead4(w0, w1, w2, w3, o, 34)
        a0 = fma(a0, dot_signed(bytes32(w0, o + 2), xq, xo), f16_of(w0, o) * d)
        a1 = fma(a1, dot_signed(bytes32(w1, o + 2), xq, xo), f16_of(w1, o) * d)
        a2 = fma(a2, dot_signed(bytes32(w2, o + 2), xq, xo), f16_of(w2, o) * d)
        a3 = fma(a3, dot_signed(bytes32(w3, o + 2), xq, xo), f16_of(w3, o) * d)
    return hsum(a0), hsum(a1), hsum(a2), hsum(a3)


@njit(fastmath=FASTMATH, inline="never")
def dot4_float(w0, w1, w2, w3, xr, lut):
    """x as it is: per block, d_w (q_w . x)."""
    x, xsum = xr
    a0 = a1 = a2 = a3 = np.float32(0.0)
    n = x.shape[0] // xsum.shape[0]                # 32 codes per block, known at run time
    for b in range(xsum.shape[0]):
        o, xo = b * (n + 2), b * n
        s0 = s1 = s2 = s3 = np.float32(0.0)
        for k in range(n):
            xk = x[xo + k]
            s0 += np.float32(np.int8(w0[o + 2 + k])) * xk
            s1 += np.float32(np.int8(w1[o + 2 + k])) * xk
            s2 += np.float32(np.int8(w2[o + 2 + k])) * xk
            s3 += np.float32(np.int8(w3[o + 2 + k])) * xk
        a0 += f16_at(w0, o, lut) * s0
        a1 += f16_at(w1, o, lut) * s1
        a2 += f16_at(w2, o, lut) * s2
        a3 += f16_at(w3, o, lut) * s3
    return a0, a1, a2, a3


# ---- the kernels: the row drivers with Q8_0's pieces ----------------------------------------------
@njit(parallel=True)
def prefill(w, x, y, act, lut, aux):
    prefill_rows(unpack_row, w, x, y, act, lut, aux)


@njit(parallel=True)
def matvec_int8(w0, w1, w2, x, y, lut):
    matvec_rows(dot4_int8, x_q8_0, w0, w1, w2, x, y, lut)


@njit(parallel=True)
def prefill_int8(w, x, y, lut):
    prefill_rows_dot4(dot4_int8, x_q8_0, w, x, y, lut)


@njit(parallel=True)
def matvec_float(w0, w1, w2, x, y, lut):
    matvec_rows(dot4_float, x_with_sums, w0, w1, w2, x, y, lut)


FORMATS = [QuantFormat("Q8_0", "q8_0", dequantize_blocks, linear_np, unpack_row, prefill=prefill,
                       matvec_int8=matvec_int8, matvec_float=matvec_float, prefill_int8=prefill_int8)]
