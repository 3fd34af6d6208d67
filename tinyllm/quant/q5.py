"""Q5_0 and Q5_1: 5-bit weights in blocks of 32 (4 low bits in nibbles, 5th bit in qh).

    Q5_0 (22 bytes):  d f16 | qh u32 | qs[16]             w = d * (q - 16)
    Q5_1 (24 bytes):  d f16 | m f16 | qh u32 | qs[16]     w = d * q + m

q for element i: low nibble of qs[i] (i < 16) or high nibble of qs[i-16] (i >= 16),
plus bit i of qh as bit 4.  Activations: Q8_0 for Q5_0, Q8_1 for Q5_1 (as Q4_0/Q4_1).
"""

from __future__ import annotations

import numpy as np

from ..jit import FASTMATH, njit, prange
from .activations import linear_q8_0_act, linear_q8_1_act, quantize_q8_0, quantize_q8_1
from .common import QuantFormat, f16_at, f16_field, n_chunks, nibbles, row_chunks, u32_field
from .matmul import chunk_rows, quantize_rows_q8_0, quantize_rows_q8_1

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


# ---- numba -------------------------------------------------------------------------------------
@njit(inline="always")
def u32_at(row, o):
    return (np.int64(row[o]) | (np.int64(row[o + 1]) << 8) | (np.int64(row[o + 2]) << 16)
            | (np.int64(row[o + 3]) << 24))


@njit(fastmath=FASTMATH)
def dot_q5_0(row, xq, xd, lut, acc):
    """One row . x in 32 float32 lanes (see q8_0.dot_q8_0)."""
    acc[:] = 0.0
    for b in range(xd.shape[0]):
        o = b * SIZE_Q5_0
        s = f16_at(row, o, lut) * xd[b]
        qh = u32_at(row, o + 2)
        x0 = b * BLOCK
        for k in range(16):
            v = row[o + 6 + k]
            lo = np.int32(v & 15) | np.int32(((qh >> k) & 1) << 4)
            hi = np.int32(v >> 4) | np.int32(((qh >> (k + 16)) & 1) << 4)
            acc[k] += s * (np.float32(lo - 16) * xq[x0 + k])
            acc[16 + k] += s * (np.float32(hi - 16) * xq[x0 + 16 + k])
    return acc.sum()


@njit(fastmath=FASTMATH)
def dot_q5_1(row, xq, xd, xs, lut, acc):
    acc[:] = 0.0
    m_sum = np.float32(0.0)
    for b in range(xd.shape[0]):
        o = b * SIZE_Q5_1
        s = f16_at(row, o, lut) * xd[b]
        m_sum += f16_at(row, o + 2, lut) * xs[b]
        qh = u32_at(row, o + 4)
        x0 = b * BLOCK
        for k in range(16):
            v = row[o + 8 + k]
            lo = np.int32(v & 15) | np.int32(((qh >> k) & 1) << 4)
            hi = np.int32(v >> 4) | np.int32(((qh >> (k + 16)) & 1) << 4)
            acc[k] += s * (np.float32(lo) * xq[x0 + k])
            acc[16 + k] += s * (np.float32(hi) * xq[x0 + 16 + k])
    return acc.sum() + m_sum


@njit(parallel=True)
def matvec_q5_0(w, x, y, lut):
    n_rows = w.shape[0]
    xq = np.empty(x.shape[0], np.float32)
    xd = np.empty(x.shape[0] // BLOCK, np.float32)
    quantize_q8_0(x, xq, xd)
    nc = n_chunks(n_rows)
    for c in prange(nc):
        acc = np.empty(BLOCK, np.float32)
        for r in chunk_rows(c, nc, n_rows):
            y[r] = dot_q5_0(w[r], xq, xd, lut, acc)


@njit(parallel=True)
def matmul_q5_0(w, x, y, lut):
    n_rows = w.shape[0]
    xq, xd = quantize_rows_q8_0(x)
    nc = n_chunks(n_rows)
    for c in prange(nc):
        acc = np.empty(BLOCK, np.float32)
        for r in chunk_rows(c, nc, n_rows):
            for t in range(x.shape[0]):
                y[t, r] = dot_q5_0(w[r], xq[t], xd[t], lut, acc)


@njit(parallel=True)
def matvec_q5_1(w, x, y, lut):
    n_rows = w.shape[0]
    xq = np.empty(x.shape[0], np.float32)
    xd = np.empty(x.shape[0] // BLOCK, np.float32)
    xs = np.empty(x.shape[0] // BLOCK, np.float32)
    quantize_q8_1(x, xq, xd, xs)
    nc = n_chunks(n_rows)
    for c in prange(nc):
        acc = np.empty(BLOCK, np.float32)
        for r in chunk_rows(c, nc, n_rows):
            y[r] = dot_q5_1(w[r], xq, xd, xs, lut, acc)


@njit(parallel=True)
def matmul_q5_1(w, x, y, lut):
    n_rows = w.shape[0]
    xq, xd, xs = quantize_rows_q8_1(x)
    nc = n_chunks(n_rows)
    for c in prange(nc):
        acc = np.empty(BLOCK, np.float32)
        for r in chunk_rows(c, nc, n_rows):
            for t in range(x.shape[0]):
                y[t, r] = dot_q5_1(w[r], xq[t], xd[t], xs[t], lut, acc)


FORMATS = [
    QuantFormat("Q5_0", 6, BLOCK, SIZE_Q5_0, "q8_0", dequantize_q5_0, linear_q5_0,
                matvec_q5_0, matmul_q5_0),
    QuantFormat("Q5_1", 7, BLOCK, SIZE_Q5_1, "q8_1", dequantize_q5_1, linear_q5_1,
                matvec_q5_1, matmul_q5_1),
]
