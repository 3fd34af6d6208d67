"""k-quants: super-blocks of 256 weights split into sub-blocks, each with a small
integer scale (and for some types a min), times one or two f16 super-scales.

    Q2_K (84 bytes):   scales[16] | qs[64] | d f16 | dmin f16
        16 sub-blocks of 16; scales[j]: low nibble sc, high nibble m;  2-bit q
        w = d*sc_j * q - dmin*m_j
    Q3_K (110 bytes):  hmask[32] | qs[64] | scales[12] | d f16
        16 sub-blocks of 16; 6-bit signed scales (sc - 32) packed 4+2 bits;
        q = 2 low bits from qs, minus 4 when the hmask bit is 0;   w = d*sc_j * q
    Q4_K (144 bytes):  d f16 | dmin f16 | scales[12] | qs[128]
        8 sub-blocks of 32; 6-bit sc and m packed in 12 bytes (see scale_min);
        qs[32p + l]: low nibble = element 64p + l, high = 64p + 32 + l
        w = d*sc_j * q - dmin*m_j
    Q5_K (176 bytes):  d f16 | dmin f16 | scales[12] | qh[32] | qs[128]
        as Q4_K, plus bit j of qh[l] is bit 4 of sub-block j's element l
    Q6_K (210 bytes):  ql[128] | qh[64] | scales[16] int8 | d f16
        16 sub-blocks of 16; per half h (128 weights): element l, l+32, l+64, l+96
        take the low/high nibbles of ql[64h + l], ql[64h + 32 + l] and 2-bit pairs
        of qh[32h + l]; q in [-32, 31];   w = d*sc_j * q

Activations are Q8_K (f32 scale per 256, int16 sums of each 16 q).  The dot of a
super-block is   d_x d sum_j sc_j sum_i q_i q_x,i  -  d_x dmin sum_j m_j bsum_j.
"""

from __future__ import annotations

import numpy as np

from ..jit import njit
from .activations import QK_K, linear_q8_K_act
from .common import QuantFormat, f16_at, f16_field, row_chunks

SIZE = {"Q2_K": 84, "Q3_K": 110, "Q4_K": 144, "Q5_K": 176, "Q6_K": 210}


# ---- numpy: unpack super-blocks into integers and scales --------------------------------------
def _bits(a, shifts, mask):
    """a (..., n) -> (..., len(shifts), n): (a >> s) & mask for each shift."""
    s = np.asarray(shifts, dtype=np.uint8).reshape(-1, 1)
    return (a[..., None, :] >> s) & np.uint8(mask)


def scale_min_k4(sc12):
    """Q4_K/Q5_K: 12 bytes -> 8 six-bit scales and 8 six-bit mins.
        bytes 0-3:  sc[0..3] low 6 bits, top 2 bits = sc[4..7] bits 4-5
        bytes 4-7:  m[0..3]  low 6 bits, top 2 bits = m[4..7]  bits 4-5
        bytes 8-11: sc[4..7] low 4 bits | m[4..7] low 4 bits << 4"""
    a, b, c = sc12[:, 0:4], sc12[:, 4:8], sc12[:, 8:12]
    sc = np.concatenate([a & 63, (c & 15) | ((a >> 6) << 4)], axis=-1)
    m = np.concatenate([b & 63, (c >> 4) | ((b >> 6) << 4)], axis=-1)
    return sc, m


def unpack_q2_K(blocks):
    n = blocks.shape[0]
    scales, qs = blocks[:, 0:16], blocks[:, 16:80]
    q = _bits(qs.reshape(n, 2, 32), [0, 2, 4, 6], 3).reshape(n, 16, 16)
    return (q.astype(np.float32), (scales & 15), f16_field(blocks, 80), scales >> 4,
            f16_field(blocks, 82))


def unpack_q3_K(blocks):
    n = blocks.shape[0]
    hmask, qs, sc12 = blocks[:, 0:32], blocks[:, 32:96], blocks[:, 96:108]
    low = np.concatenate([sc12[:, 0:8] & 15, sc12[:, 0:8] >> 4], axis=-1)       # (n, 16)
    high = _bits(sc12[:, 8:12], [0, 2, 4, 6], 3).reshape(n, 16)
    sc = (low | (high << 4)).astype(np.int8) - np.int8(32)
    ql = _bits(qs.reshape(n, 2, 32), [0, 2, 4, 6], 3).reshape(n, 8, 32)
    hb = _bits(hmask, range(8), 1)                                                # (n, 8, 32)
    q = (ql.astype(np.int8) - ((hb ^ 1) << 2).astype(np.int8)).reshape(n, 16, 16)
    return q.astype(np.float32), sc, f16_field(blocks, 108), None, None


def unpack_q4_K(blocks):
    n = blocks.shape[0]
    sc, m = scale_min_k4(blocks[:, 4:16])
    q = _bits(blocks[:, 16:].reshape(n, 4, 32), [0, 4], 15).reshape(n, 8, 32)
    return q.astype(np.float32), sc, f16_field(blocks, 0), m, f16_field(blocks, 2)


def unpack_q5_K(blocks):
    n = blocks.shape[0]
    sc, m = scale_min_k4(blocks[:, 4:16])
    ql = _bits(blocks[:, 48:].reshape(n, 4, 32), [0, 4], 15).reshape(n, 8, 32)
    qh = _bits(blocks[:, 16:48], range(8), 1)                                     # (n, 8, 32)
    q = ql | (qh << 4)
    return q.astype(np.float32), sc, f16_field(blocks, 0), m, f16_field(blocks, 2)


def unpack_q6_K(blocks):
    n = blocks.shape[0]
    ql = _bits(blocks[:, 0:128].reshape(n, 2, 64), [0, 4], 15)                   # (n, 2, 2, 64)
    ql = ql.reshape(n, 2, 2, 2, 32).reshape(n, 2, 4, 32)      # order: nibble, then 32-half
    qh = _bits(blocks[:, 128:192].reshape(n, 2, 32), [0, 2, 4, 6], 3)             # (n, 2, 4, 32)
    q = (ql | (qh << 4)).astype(np.int8) - np.int8(32)
    sc = blocks[:, 192:208].view(np.int8)
    return q.reshape(n, 16, 16).astype(np.float32), sc, f16_field(blocks, 208), None, None


def _dequantizer(unpack):
    def dequantize_blocks(blocks):
        """(n, type_size) -> (n, 256) float32, same float ops as gguf: (d*sc)*q - (dmin*m)."""
        q, sc, d, m, dmin = unpack(blocks)
        w = (d[:, None] * sc.astype(np.float32))[..., None] * q
        if m is not None:
            w = w - (dmin[:, None] * m.astype(np.float32))[..., None]
        return w.reshape(blocks.shape[0], QK_K)
    return dequantize_blocks


def _linear(unpack, size):
    def by_rows(raw):
        q, sc, d, m, dmin = unpack(raw.reshape(-1, size))
        R = raw.shape[0]
        q = q.reshape(R, -1, *q.shape[1:])
        sc, d = sc.reshape(R, -1, sc.shape[-1]), d.reshape(R, -1)
        if m is not None:
            m, dmin = m.reshape(R, -1, m.shape[-1]), dmin.reshape(R, -1)
        return q, sc, d, m, dmin

    def linear_np(raw, x):
        n_cols = raw.shape[1] // size * QK_K
        return linear_q8_K_act(by_rows, raw, x, row_chunks(raw.shape[0], n_cols, x.shape[0]))
    return linear_np


# ---- numba: one row -> float32 weights (see kernels.py) ---------------------------------------
# wf (n,) = (d sc_j) q - (dmin m_j): the row dequantized exactly as dequantize_blocks does.
# The mins need no separate term: Q8_K's scale is a plain float32, so folding them into
# the weights changes only float rounding.  Inner trip counts (16, 32) are derived from
# array shapes at run time: see kernels.py for why.

@njit(inline="always")
def scale_min_at(row, o, j):
    """Q4_K/Q5_K: six-bit (scale, min) of sub-block j from the 12 bytes at row[o]."""
    if j < 4:
        return np.int32(row[o + j] & 63), np.int32(row[o + j + 4] & 63)
    sc = np.int32(row[o + j + 4] & 15) | (np.int32(row[o + j - 4] >> 6) << 4)
    m = np.int32(row[o + j + 4] >> 4) | (np.int32(row[o + j] >> 6) << 4)
    return sc, m


@njit(inline="never")
def unpack_row_q2_K(row, wf, gm, lut, aux):
    nB = row.shape[0] // 84
    n16 = wf.shape[0] // (16 * nB)                  # 16
    for B in range(nB):
        o = B * 84
        d, dmin = f16_at(row, o + 80, lut), f16_at(row, o + 82, lut)
        for h in range(2):                          # 128 weights: 2-bit fields s of qs[32h + l]
            for s in range(4):
                for g in range(2):
                    j = 8 * h + 2 * s + g           # sub-block of 16
                    dl = d * np.float32(row[o + j] & 15)
                    ml = dmin * np.float32(row[o + j] >> 4)
                    q0, x0 = o + 16 + 32 * h + 16 * g, B * 256 + 128 * h + 32 * s + 16 * g
                    for k in range(n16):
                        q = (np.int32(row[q0 + k]) >> (2 * s)) & 3
                        wf[x0 + k] = dl * np.float32(q) - ml


@njit(inline="never")
def unpack_row_q3_K(row, wf, gm, lut, aux):
    nB = row.shape[0] // 110
    n16 = wf.shape[0] // (16 * nB)                  # 16
    for B in range(nB):
        o = B * 110
        d = f16_at(row, o + 108, lut)
        for h in range(2):
            for s in range(4):                      # weights 128h + 32s + l: bits 2s of qs
                i = 4 * h + s                       # and bit i of hmask[l]
                for g in range(2):
                    j = 8 * h + 2 * s + g           # sub-block of 16
                    lo = np.int32(row[o + 96 + (j % 8)])
                    lo = (lo & 15) if j < 8 else (lo >> 4)
                    hi = (np.int32(row[o + 104 + (j % 4)]) >> (2 * (j // 4))) & 3
                    dl = d * np.float32((lo | (hi << 4)) - 32)
                    x0 = B * 256 + 128 * h + 32 * s + 16 * g
                    for k in range(n16):
                        l = 16 * g + k
                        q = (np.int32(row[o + 32 + 32 * h + l]) >> (2 * s)) & 3
                        q -= 4 - 4 * ((np.int32(row[o + l]) >> i) & 1)
                        wf[x0 + k] = dl * np.float32(q)


@njit(inline="never")
def unpack_row_q4_K(row, wf, gm, lut, aux):
    nB = row.shape[0] // 144
    n32 = wf.shape[0] // (8 * nB)                   # 32
    for B in range(nB):
        o = B * 144
        d, dmin = f16_at(row, o, lut), f16_at(row, o + 2, lut)
        for p in range(4):                          # sub-blocks 2p (low nibbles), 2p+1 (high)
            sc0, m0 = scale_min_at(row, o + 4, 2 * p)
            sc1, m1 = scale_min_at(row, o + 4, 2 * p + 1)
            d0, m0f = d * np.float32(sc0), dmin * np.float32(m0)
            d1, m1f = d * np.float32(sc1), dmin * np.float32(m1)
            q0, x0 = o + 16 + 32 * p, B * 256 + 64 * p
            for k in range(n32):
                v = np.int32(row[q0 + k])
                wf[x0 + k] = d0 * np.float32(v & 15) - m0f
                wf[x0 + n32 + k] = d1 * np.float32(v >> 4) - m1f


@njit(inline="never")
def unpack_row_q5_K(row, wf, gm, lut, aux):
    nB = row.shape[0] // 176
    n32 = wf.shape[0] // (8 * nB)                   # 32
    for B in range(nB):
        o = B * 176
        d, dmin = f16_at(row, o, lut), f16_at(row, o + 2, lut)
        for p in range(4):
            sc0, m0 = scale_min_at(row, o + 4, 2 * p)
            sc1, m1 = scale_min_at(row, o + 4, 2 * p + 1)
            d0, m0f = d * np.float32(sc0), dmin * np.float32(m0)
            d1, m1f = d * np.float32(sc1), dmin * np.float32(m1)
            q0, x0 = o + 48 + 32 * p, B * 256 + 64 * p
            for k in range(n32):
                v = np.int32(row[q0 + k])
                h = np.int32(row[o + 16 + k]) >> (2 * p)    # bit j of qh[k]: 5th bit, sub-block j
                wf[x0 + k] = d0 * np.float32((v & 15) | ((h & 1) << 4)) - m0f
                wf[x0 + n32 + k] = d1 * np.float32((v >> 4) | ((h & 2) << 3)) - m1f


@njit(inline="never")
def unpack_row_q6_K(row, wf, gm, lut, aux):
    nB = row.shape[0] // 210
    n16 = wf.shape[0] // (16 * nB)                  # 16
    for B in range(nB):
        o = B * 210
        d = f16_at(row, o + 208, lut)
        for h in range(2):                          # two halves of 128 weights
            ql, qh, x0 = o + 64 * h, o + 128 + 32 * h, B * 256 + 128 * h
            for g in range(2):                      # l in 16g..16g+15 share four scales
                sc = o + 192 + 8 * h + g
                d1 = d * np.float32(np.int8(row[sc]))
                d2 = d * np.float32(np.int8(row[sc + 2]))
                d3 = d * np.float32(np.int8(row[sc + 4]))
                d4 = d * np.float32(np.int8(row[sc + 6]))
                for k in range(n16):
                    l = 16 * g + k
                    a = np.int32(row[ql + l])
                    b = np.int32(row[ql + 32 + l])
                    c = np.int32(row[qh + l])
                    wf[x0 + l] = d1 * np.float32(((a & 15) | ((c & 3) << 4)) - 32)
                    wf[x0 + 32 + l] = d2 * np.float32(((b & 15) | ((c & 12) << 2)) - 32)
                    wf[x0 + 64 + l] = d3 * np.float32(((a >> 4) | (c & 48)) - 32)
                    wf[x0 + 96 + l] = d4 * np.float32(((b >> 4) | ((c >> 2) & 48)) - 32)


def _format(name, ggml_type, unpack, unpack_row):
    return QuantFormat(name, ggml_type, QK_K, SIZE[name], "q8_K", _dequantizer(unpack),
                       _linear(unpack, SIZE[name]), unpack_row)


FORMATS = [
    _format("Q2_K", 10, unpack_q2_K, unpack_row_q2_K),
    _format("Q3_K", 11, unpack_q3_K, unpack_row_q3_K),
    _format("Q4_K", 12, unpack_q4_K, unpack_row_q4_K),
    _format("Q5_K", 13, unpack_q5_K, unpack_row_q5_K),
    _format("Q6_K", 14, unpack_q6_K, unpack_row_q6_K),
]
