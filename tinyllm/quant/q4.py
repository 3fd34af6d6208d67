"""Q4_0 and Q4_1: 4-bit weights in blocks of 32.

    Q4_0 (18 bytes):  d f16 | qs[16]                  w = d * (q - 8)
    Q4_1 (20 bytes):  d f16 | m f16 | qs[16]          w = d * q + m

qs[16] holds 32 nibbles: low nibbles are elements 0..15, high nibbles 16..31.
Q4_0 takes Q8_0 activations; Q4_1 takes Q8_1, whose s = d_x*sum(q_x) turns the
offset into one multiply per block:  sum_i (d q_i + m) x_i = d d_x sum q_i q_x,i + m s.
"""

from __future__ import annotations

import numpy as np

from ..jit import njit
from .activations import linear_q8_0_act, linear_q8_1_act
from .common import QuantFormat, f16_at, f16_field, nibbles, row_chunks

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


# ---- numba: one row -> float32 weights (see kernels.py) ---------------------------------------
@njit(inline="never")
def unpack_row_q4_0(row, wf, gm, lut, aux):
    """wf (n,) = d * (q - 8)."""
    nb = row.shape[0] // SIZE_Q4_0
    half = wf.shape[0] // nb // 2       # 16, known only at run time (see kernels.py)
    for b in range(nb):
        o = b * SIZE_Q4_0
        d = f16_at(row, o, lut)
        x0 = b * 2 * half
        for k in range(half):
            v = np.int32(row[o + 2 + k])
            wf[x0 + k] = np.float32(np.int32(v & 15) - np.int32(8)) * d
            wf[x0 + half + k] = np.float32(np.int32(v >> 4) - np.int32(8)) * d


@njit(inline="never")
def unpack_row_q4_1(row, wf, gm, lut, aux):
    """wf (n,) = d * q, gm (n/32,) = m: the offset multiplies Q8_1's s = d_x sum q_x
    (an f16, as in llama.cpp), so it is kept apart from the weights."""
    nb = row.shape[0] // SIZE_Q4_1
    half = wf.shape[0] // nb // 2
    for b in range(nb):
        o = b * SIZE_Q4_1
        d = f16_at(row, o, lut)
        gm[b] = f16_at(row, o + 2, lut)
        x0 = b * 2 * half
        for k in range(half):
            v = np.int32(row[o + 4 + k])
            wf[x0 + k] = np.float32(np.int32(v & 15)) * d
            wf[x0 + half + k] = np.float32(np.int32(v >> 4)) * d


FORMATS = [
    QuantFormat("Q4_0", 2, BLOCK, SIZE_Q4_0, "q8_0", dequantize_q4_0, linear_q4_0,
                unpack_row_q4_0),
    QuantFormat("Q4_1", 3, BLOCK, SIZE_Q4_1, "q8_1", dequantize_q4_1, linear_q4_1,
                unpack_row_q4_1, mins="q8_1"),
]
