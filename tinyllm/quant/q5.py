"""Q5_0 and Q5_1: 5-bit weights in blocks of 32 (4 low bits in nibbles, 5th bit in qh).

    Q5_0 (22 bytes):  d f16 | qh u32 | qs[16]             w = d * (q - 16)
    Q5_1 (24 bytes):  d f16 | m f16 | qh u32 | qs[16]     w = d * q + m

q for element i: low nibble of qs[i] (i < 16) or high nibble of qs[i-16] (i >= 16),
plus bit i of qh as bit 4.  Activations: Q8_0 for Q5_0, Q8_1 for Q5_1 (as Q4_0/Q4_1).
"""

from __future__ import annotations

import numpy as np

from ..jit import njit
from .activations import linear_q8_0_act, linear_q8_1_act
from .common import QuantFormat, f16_at, f16_field, nibbles, row_chunks, u32_field

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


# ---- numba: one row -> integers and scales (see kernels.py) ----------------------------------
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
    half = wf.shape[0] // nb // 2       # 16, known only at run time (see kernels.py)
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


FORMATS = [
    QuantFormat("Q5_0", 6, BLOCK, SIZE_Q5_0, "q8_0", dequantize_q5_0, linear_q5_0,
                unpack_row_q5_0),
    QuantFormat("Q5_1", 7, BLOCK, SIZE_Q5_1, "q8_1", dequantize_q5_1, linear_q5_1,
                unpack_row_q5_1, mins="q8_1"),
]
