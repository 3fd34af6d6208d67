"""Q5_0 and Q5_1: 5-bit weights in blocks of 32 (4 low bits in nibbles, 5th bit in qh).

    Q5_0 (22 bytes):  d f16 | qh u32 | qs[16]             w = d * (q - 16)
    Q5_1 (24 bytes):  d f16 | m f16 | qh u32 | qs[16]     w = d * q + m

q for element i: low nibble of qs[i] (i < 16) or high nibble of qs[i-16] (i >= 16),
plus bit i of qh as bit 4.  Activations: Q8_0 for Q5_0, Q8_1 for Q5_1 (as Q4_0/Q4_1).
"""

from __future__ import annotations

import numpy as np

from ..jit import FASTMATH, njit
from .activations import linear_q8_0_act, linear_q8_1_act, x_q8_0_biased
from .common import LO4, QuantFormat, f16_at, f16_field, hi, lo, nibbles, row_chunks, u32_field, u32_le
from .q4 import dot4_int8_biased
from .rows import ACT_Q8_0, matvec_rows, prefill_rows, prefill_rows_int8, x_blocks, x_with_sums

BLOCK = 32
SIZE_Q5_0, SIZE_Q5_1 = 22, 24
_BIT = np.arange(32, dtype=np.uint32)


# ---- numpy -------------------------------------------------------------------------------------
def _q5(blocks, qh_at):
    """(n, size) blocks -> (n, 32) float32 unsigned 5-bit values."""
    high = ((u32_field(blocks, qh_at)[:, None] >> _BIT) & 1).astype(np.uint8) << 4
    return (nibbles(blocks[:, qh_at + 4:]) | high).astype(np.float32)


def dequantize_q5_0(blocks):
    return f16_field(blocks, 0)[:, None] * (_q5(blocks, 2) - np.float32(16))


def dequantize_q5_1(blocks):
    return f16_field(blocks, 0)[:, None] * _q5(blocks, 4) + f16_field(blocks, 2)[:, None]


def unpack_q5_0(raw):
    b = raw.reshape(-1, SIZE_Q5_0)
    q = (_q5(b, 2) - 16).reshape(raw.shape[0], -1, BLOCK)
    return q, f16_field(b, 0).reshape(raw.shape[0], -1)


def unpack_q5_1(raw):
    b = raw.reshape(-1, SIZE_Q5_1)
    shape = (raw.shape[0], -1)
    q = _q5(b, 4).reshape(raw.shape[0], -1, BLOCK)
    return q, f16_field(b, 0).reshape(shape), f16_field(b, 2).reshape(shape)


def linear_q5_0(raw, x):
    n_cols = raw.shape[1] // SIZE_Q5_0 * BLOCK
    return linear_q8_0_act(unpack_q5_0, raw, x, row_chunks(raw.shape[0], n_cols, x.shape[0]))


def linear_q5_1(raw, x):
    n_cols = raw.shape[1] // SIZE_Q5_1 * BLOCK
    return linear_q8_1_act(unpack_q5_1, raw, x, row_chunks(raw.shape[0], n_cols, x.shape[0]))


# ---- prefill: one row -> float32 weights (rows.prefill_rows) ------------------------------------
@njit(inline="always")
def u32_at(row, o):
    return (np.int64(row[o]) | (np.int64(row[o + 1]) << 8) | (np.int64(row[o + 2]) << 16)
            | (np.int64(row[o + 3]) << 24))


@njit(inline="always")
def unpack_q5_block(row, o_qh, d, wf, w0, half, offset):
    """wf[w0:w0+32] = d * (q - offset) for the block whose qh is at row[o_qh]."""
    qh = u32_at(row, o_qh)
    for k in range(half):
        v = np.int64(row[o_qh + 4 + k])
        wf[w0 + k] = np.float32(((v & 15) | (((qh >> k) & 1) << 4)) - offset) * d
        wf[w0 + half + k] = np.float32(((v >> 4) | (((qh >> (k + half)) & 1) << 4)) - offset) * d


@njit(inline="never")
def unpack_row_q5_0(row, wf, gm, lut, aux):
    """wf (n,) = d * (q - 16)."""
    nb = row.shape[0] // SIZE_Q5_0
    half = wf.shape[0] // nb // 2       # 16, known only at run time (see rows.py)
    for b in range(nb):
        o = b * SIZE_Q5_0
        unpack_q5_block(row, o + 2, f16_at(row, o, lut), wf, b * 2 * half, half, 16)


@njit(inline="never")
def unpack_row_q5_1(row, wf, gm, lut, aux):
    """wf (n,) = d * q, gm (n/32,) = m (see q4.unpack_row_q4_1)."""
    nb = row.shape[0] // SIZE_Q5_1
    half = wf.shape[0] // nb // 2
    for b in range(nb):
        o = b * SIZE_Q5_1
        gm[b] = f16_at(row, o + 2, lut)
        unpack_q5_block(row, o + 4, f16_at(row, o, lut), wf, b * 2 * half, half, 0)


# ---- int8 prefill: one row -> its codes and block scales (rows.prefill_rows_int8) ---------------
@njit(inline="always")
def bit4_per_byte(bits):
    """bits 0..3 of a uint32 -> bit 4 of bytes 0..3: four codes' fifth bits at once"""
    return (((bits & 1) << 4) | ((bits & 2) << 11) | ((bits & 4) << 18) | ((bits & 8) << 25))


@njit(inline="never")
def codes_q5_0(row, P4, i, S8, M8, lut):
    """codes q (0..31, stored q - 16 is the weight), four at a time, as row i of the 8
    interleaved in P4; S = d per block."""
    for b in range(S8.shape[0] // 8):
        o = b * SIZE_Q5_0
        S8[8 * b + i] = f16_at(row, o, lut)
        qh = u32_le(row, o + 2)
        for j in range(4):                          # bytes 4j..: codes 4j.. (low), 16 + 4j.. (high)
            v = u32_le(row, o + 6 + 4 * j)
            P4[8 * (8 * b + j) + i] = (v & LO4) | bit4_per_byte(qh >> (4 * j))
            P4[8 * (8 * b + 4 + j) + i] = ((v >> 4) & LO4) | bit4_per_byte(qh >> (16 + 4 * j))


# ---- decode: four rows' dot products (rows.matvec_rows) -----------------------------------------
@njit(fastmath=FASTMATH, inline="never")
def dot4_int8_q5_0(w0, w1, w2, w3, xr, lut):
    """x rounded to Q8_0, the bias 16 in xi (q4.dot4_int8_biased)."""
    xq, xd, xi = xr
    return dot4_int8_biased(w0, w1, w2, w3, xq, xd, xi, lut, True)


@njit(inline="always")
def q5(nibble, qh, k):
    """a 4-bit code with bit k of qh as its 5th bit, as uint8 (narrow, as common.lo/hi)"""
    return np.uint8(nibble | (((qh >> k) & 1) << 4))


@njit(fastmath=FASTMATH, inline="never")
def dot4_float_q5_0(w0, w1, w2, w3, xr, lut):
    """x as it is: d (q . x) - 16 d sum(x) per block."""
    x, xsum = xr
    hb = x.shape[0] // xsum.shape[0] // 2          # 16, known at run time (rows.py)
    a0 = a1 = a2 = a3 = np.float32(0.0)
    for b in range(xsum.shape[0]):
        o, xo = b * (hb + 6), b * 2 * hb
        h0, h1, h2, h3 = u32_le(w0, o + 2), u32_le(w1, o + 2), u32_le(w2, o + 2), u32_le(w3, o + 2)
        s0 = s1 = s2 = s3 = np.float32(0.0)
        for k in range(hb):
            xl, xh = x[xo + k], x[xo + hb + k]
            k16 = k + 16
            q0, q1, q2, q3 = w0[o + 6 + k], w1[o + 6 + k], w2[o + 6 + k], w3[o + 6 + k]
            s0 += np.float32(q5(lo(q0), h0, k)) * xl + np.float32(q5(hi(q0), h0, k16)) * xh
            s1 += np.float32(q5(lo(q1), h1, k)) * xl + np.float32(q5(hi(q1), h1, k16)) * xh
            s2 += np.float32(q5(lo(q2), h2, k)) * xl + np.float32(q5(hi(q2), h2, k16)) * xh
            s3 += np.float32(q5(lo(q3), h3, k)) * xl + np.float32(q5(hi(q3), h3, k16)) * xh
        xs = np.float32(16.0) * xsum[b]
        a0 += f16_at(w0, o, lut) * (s0 - xs)
        a1 += f16_at(w1, o, lut) * (s1 - xs)
        a2 += f16_at(w2, o, lut) * (s2 - xs)
        a3 += f16_at(w3, o, lut) * (s3 - xs)
    return a0, a1, a2, a3


# ---- the kernels: the row drivers with each format's pieces -------------------------------------
@njit
def x_q5_0(x):
    return x_q8_0_biased(x, 16)


@njit
def xT_q5_0(x):
    return x_blocks(x, ACT_Q8_0, 32, 16)


@njit(parallel=True)
def prefill_q5_0(w, x, y, act, lut, aux):
    prefill_rows(unpack_row_q5_0, w, x, y, act, lut, aux)


@njit(parallel=True)
def matvec_int8_q5_0(w0, w1, w2, x, y, lut):
    matvec_rows(dot4_int8_q5_0, x_q5_0, w0, w1, w2, x, y, lut)


@njit(parallel=True)
def prefill_int8_q5_0(w, x, y, lut):
    prefill_rows_int8(codes_q5_0, xT_q5_0, 5, w, x, y, lut)


@njit(parallel=True)
def matvec_float_q5_0(w0, w1, w2, x, y, lut):
    matvec_rows(dot4_float_q5_0, x_with_sums, w0, w1, w2, x, y, lut)


@njit(parallel=True)
def prefill_q5_1(w, x, y, act, lut, aux):
    prefill_rows(unpack_row_q5_1, w, x, y, act, lut, aux)


FORMATS = [
    QuantFormat("Q5_0", "q8_0", dequantize_q5_0, linear_q5_0, unpack_row_q5_0, prefill=prefill_q5_0,
                matvec_int8=matvec_int8_q5_0, matvec_float=matvec_float_q5_0,
                prefill_int8=prefill_int8_q5_0),
    QuantFormat("Q5_1", "q8_1", dequantize_q5_1, linear_q5_1, unpack_row_q5_1, mins="q8_1",
                prefill=prefill_q5_1),
]
