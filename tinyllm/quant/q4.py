"""Q4_0 and Q4_1: 4-bit weights in blocks of 32.

    Q4_0 (18 bytes):  d f16 | qs[16]                  w = d * (q - 8)
    Q4_1 (20 bytes):  d f16 | m f16 | qs[16]          w = d * q + m

qs[16] holds 32 nibbles: low nibbles are elements 0..15, high nibbles 16..31.
Q4_0 takes Q8_0 activations; Q4_1 takes Q8_1, whose s = d_x*sum(q_x) turns the
offset into one multiply per block:  sum_i (d q_i + m) x_i = d d_x sum q_i q_x,i + m s.
"""

from __future__ import annotations

import numpy as np

from ..jit import FASTMATH, njit, prange
from .activations import linear_q8_0_act, linear_q8_1_act, quantize_q8_0, quantize_q8_1
from .common import QuantFormat, f16_at, f16_field, n_chunks, nibbles, row_chunks
from .matmul import chunk_rows, quantize_rows_q8_0, quantize_rows_q8_1

BLOCK = 32
SIZE_Q4_0, SIZE_Q4_1 = 18, 20


# ---- numpy -------------------------------------------------------------------------------------
def dequantize_q4_0(blocks):
    q = nibbles(blocks[:, 2:]).astype(np.float32) - np.float32(8)
    return f16_field(blocks, 0)[:, None] * q


def dequantize_q4_1(blocks):
    q = nibbles(blocks[:, 4:]).astype(np.float32)
    return f16_field(blocks, 0)[:, None] * q + f16_field(blocks, 2)[:, None]


def unpack_q4_0(raw):
    b = raw.reshape(-1, SIZE_Q4_0)
    q = (nibbles(b[:, 2:]).astype(np.float32) - 8).reshape(raw.shape[0], -1, BLOCK)
    return q, f16_field(b, 0).reshape(raw.shape[0], -1)


def unpack_q4_1(raw):
    b = raw.reshape(-1, SIZE_Q4_1)
    q = nibbles(b[:, 4:]).astype(np.float32).reshape(raw.shape[0], -1, BLOCK)
    shape = (raw.shape[0], -1)
    return q, f16_field(b, 0).reshape(shape), f16_field(b, 2).reshape(shape)


def linear_q4_0(raw, x):
    n_cols = raw.shape[1] // SIZE_Q4_0 * BLOCK
    return linear_q8_0_act(unpack_q4_0, raw, x, row_chunks(raw.shape[0], n_cols, x.shape[0]))


def linear_q4_1(raw, x):
    n_cols = raw.shape[1] // SIZE_Q4_1 * BLOCK
    return linear_q8_1_act(unpack_q4_1, raw, x, row_chunks(raw.shape[0], n_cols, x.shape[0]))


# ---- numba: Q4_0 -------------------------------------------------------------------------------
@njit(fastmath=FASTMATH)
def dot_q4_0(row, xq, xd, lut, acc):
    """One row . x, in 32 float32 lanes (see q8_0.dot_q8_0 for why lanes)."""
    acc[:] = 0.0
    for b in range(xd.shape[0]):
        o = b * SIZE_Q4_0
        s = f16_at(row, o, lut) * xd[b]
        x0 = b * BLOCK
        for k in range(16):
            v = row[o + 2 + k]
            acc[k] += s * (np.float32(np.int32(v & 15) - 8) * xq[x0 + k])
            acc[16 + k] += s * (np.float32(np.int32(v >> 4) - 8) * xq[x0 + 16 + k])
    return acc.sum()


@njit(parallel=True)
def matvec_q4_0(w, x, y, lut):
    n_rows = w.shape[0]
    xq = np.empty(x.shape[0], np.float32)
    xd = np.empty(x.shape[0] // BLOCK, np.float32)
    quantize_q8_0(x, xq, xd)
    nc = n_chunks(n_rows)
    for c in prange(nc):
        acc = np.empty(BLOCK, np.float32)
        for r in chunk_rows(c, nc, n_rows):
            y[r] = dot_q4_0(w[r], xq, xd, lut, acc)


@njit(parallel=True)
def matmul_q4_0(w, x, y, lut):
    n_rows = w.shape[0]
    xq, xd = quantize_rows_q8_0(x)
    nc = n_chunks(n_rows)
    for c in prange(nc):
        acc = np.empty(BLOCK, np.float32)
        for r in chunk_rows(c, nc, n_rows):
            for t in range(x.shape[0]):
                y[t, r] = dot_q4_0(w[r], xq[t], xd[t], lut, acc)


# ---- numba: Q4_1 -------------------------------------------------------------------------------
@njit(fastmath=FASTMATH)
def dot_q4_1(row, xq, xd, xs, lut, acc):
    acc[:] = 0.0
    m_sum = np.float32(0.0)
    for b in range(xd.shape[0]):
        o = b * SIZE_Q4_1
        s = f16_at(row, o, lut) * xd[b]
        m_sum += f16_at(row, o + 2, lut) * xs[b]
        x0 = b * BLOCK
        for k in range(16):
            v = row[o + 4 + k]
            acc[k] += s * (np.float32(v & 15) * xq[x0 + k])
            acc[16 + k] += s * (np.float32(v >> 4) * xq[x0 + 16 + k])
    return acc.sum() + m_sum


@njit(parallel=True)
def matvec_q4_1(w, x, y, lut):
    n_rows = w.shape[0]
    xq = np.empty(x.shape[0], np.float32)
    xd = np.empty(x.shape[0] // BLOCK, np.float32)
    xs = np.empty(x.shape[0] // BLOCK, np.float32)
    quantize_q8_1(x, xq, xd, xs)
    nc = n_chunks(n_rows)
    for c in prange(nc):
        acc = np.empty(BLOCK, np.float32)
        for r in chunk_rows(c, nc, n_rows):
            y[r] = dot_q4_1(w[r], xq, xd, xs, lut, acc)


@njit(parallel=True)
def matmul_q4_1(w, x, y, lut):
    n_rows = w.shape[0]
    xq, xd, xs = quantize_rows_q8_1(x)
    nc = n_chunks(n_rows)
    for c in prange(nc):
        acc = np.empty(BLOCK, np.float32)
        for r in chunk_rows(c, nc, n_rows):
            for t in range(x.shape[0]):
                y[t, r] = dot_q4_1(w[r], xq[t], xd[t], xs[t], lut, acc)


FORMATS = [
    QuantFormat("Q4_0", 2, BLOCK, SIZE_Q4_0, "q8_0", dequantize_q4_0, linear_q4_0,
                matvec_q4_0, matmul_q4_0),
    QuantFormat("Q4_1", 3, BLOCK, SIZE_Q4_1, "q8_1", dequantize_q4_1, linear_q4_1,
                matvec_q4_1, matmul_q4_1),
]
