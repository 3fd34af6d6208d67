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

from ..ggml_types import GGML_QUANT_SIZES, GGMLQuantizationType
from ..jit import FASTMATH, HAVE_NUMBA, njit
from .activations import QK_K, linear_q8_K_act, x_q8_K
from .common import LO2, LO4, QuantFormat, f16_at, f16_field, hi, lo, row_chunks, u32_le
from .rows import ACT_Q8_K, fetch_ahead, fetch_ahead4, matvec_rows, prefill_rows, prefill_rows_int8, x_blocks, x_with_sums

if HAVE_NUMBA:
    from .simd import (add, dot_scaled, fma, hsum, int8x8, lane, load_i32x8, mul, nibbles_hi,
                       nibbles_lo, q4_K_scales, scale_pair, with_2bits, zeros_f32x8, zeros_i32x8)
    from .simd import f16_at as f16_of



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


# ---- prefill: one row -> float32 weights (rows.prefill_rows) ------------------------------------
# wf (n,) = (d sc_j) q - (dmin m_j): the row dequantized exactly as dequantize_blocks does.
# The mins need no separate term: Q8_K's scale is a plain float32, so folding them into
# the weights changes only float rounding.  Inner trip counts (16, 32) are derived from
# array shapes at run time: see rows.py for why.

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


# ---- int8 prefill: one row -> its codes and sub-block scales (rows.prefill_rows_int8) -----------
# Both write row i of the 8 interleaved rows: codes four at a time into P4, a sub-block's
# scale (and offset) into S8 (M8) lane i.
@njit(inline="never")
def codes_q4_K(row, P4, i, S8, M8, lut):
    """codes q (0..15), S = d sc_j and M = -dmin m_j per sub-block of 32."""
    for B in range(S8.shape[0] // 64):
        o = B * 144
        d, dmin = f16_at(row, o, lut), f16_at(row, o + 2, lut)
        for j in range(8):
            sc, m = scale_min_at(row, o + 4, j)
            S8[8 * (8 * B + j) + i] = d * np.float32(sc)
            M8[8 * (8 * B + j) + i] = -(dmin * np.float32(m))
        for p in range(4):              # qs[32p + l]: code 64p + l (low nibble), 64p + 32 + l (high)
            for l4 in range(8):
                v = u32_le(row, o + 16 + 32 * p + 4 * l4)
                g = 64 * B + 16 * p + l4                # the group of codes 256B + 64p + 4 l4 ..
                P4[8 * g + i] = v & LO4
                P4[8 * (g + 8) + i] = (v >> 4) & LO4


@njit(inline="never")
def codes_q6_K(row, P4, i, S8, M8, lut):
    """codes q (0..63; the weight is q - 32), S = d sc_j per sub-block of 16."""
    for B in range(S8.shape[0] // 128):
        o = B * 210
        d = f16_at(row, o + 208, lut)
        for j in range(16):
            S8[8 * (16 * B + j) + i] = d * np.float32(np.int8(row[o + 192 + j]))
        for h in range(2):              # two halves of 128 weights: codes l, 32+l, 64+l, 96+l take
            for l4 in range(8):         # the nibbles of ql[l], ql[32+l] and the bit pairs of qh[l]
                a = u32_le(row, o + 64 * h + 4 * l4)
                b = u32_le(row, o + 64 * h + 32 + 4 * l4)
                c = u32_le(row, o + 128 + 32 * h + 4 * l4)
                g = 64 * B + 32 * h + l4                # the group of codes 256B + 128h + 4 l4 ..
                P4[8 * g + i] = (a & LO4) | ((c & LO2) << 4)
                P4[8 * (g + 8) + i] = (b & LO4) | (((c >> 2) & LO2) << 4)
                P4[8 * (g + 16) + i] = ((a >> 4) & LO4) | (((c >> 4) & LO2) << 4)
                P4[8 * (g + 24) + i] = ((b >> 4) & LO4) | (((c >> 6) & LO2) << 4)


# ---- decode with int8 x: four rows' dot products (rows.matvec_rows) -----------------------------
# Q8_K x: one float d_x per 256, and the sums of q_x per sub-block (bs32 for Q4_K's 32,
# bs16 for Q6_K's 16).  A sub-block's dot q_j . q_x lands in 8 int32 lanes (simd.dot_scaled
# multiplies them by sc_j as integers); the super-block scale turns them into floats.
#   Q4_K:  y = d_w d_x sum_j sc_j (q_j . q_x)  -  dmin_w d_x sum_j m_j bs32[j]
#   Q6_K:  y = d_w d_x (sum_j sc_j (q_j . q_x)  -  32 sum_j sc_j bs16[j])   (codes stored +32)
@njit(inline="always")
def _q4_K_row(acc, w, o, B, xq, xd, bs32):
    sc, m = q4_K_scales(w, o + 4)
    even = odd = zeros_i32x8()          # two chains of multiply-adds: half the latency
    for p in range(4):
        q, xo = o + 16 + 32 * p, 256 * B + 64 * p
        even = dot_scaled(even, nibbles_lo(w, q), xq, xo, lane(sc, 2 * p))
        odd = dot_scaled(odd, nibbles_hi(w, q), xq, xo + 32, lane(sc, 2 * p + 1))
    d = xd[B]
    acc = fma(acc, add(even, odd), f16_of(w, o) * d)
    # the mins' lanes m_j bs32[j] go into the same float lanes, scaled by -dmin d_x
    return fma(acc, mul(m, load_i32x8(bs32, 8 * B)), -(f16_of(w, o + 2) * d))


@njit(inline="always")
def _q6_K_row(acc, w, o, B, xq, xd, bs16):
    lo = hi = zeros_i32x8()             # two chains of multiply-adds: half the latency
    for h in range(2):
        ql, qh, xo, sc = o + 64 * h, o + 128 + 32 * h, 256 * B + 128 * h, o + 192 + 8 * h
        # each dot covers two sub-blocks: lanes 0..3 the first 16 weights, 4..7 the next
        lo = dot_scaled(lo, with_2bits(nibbles_lo(w, ql), w, qh, 0), xq, xo, scale_pair(w, sc))
        lo = dot_scaled(lo, with_2bits(nibbles_lo(w, ql + 32), w, qh, 2), xq, xo + 32, scale_pair(w, sc + 2))
        hi = dot_scaled(hi, with_2bits(nibbles_hi(w, ql), w, qh, 4), xq, xo + 64, scale_pair(w, sc + 4))
        hi = dot_scaled(hi, with_2bits(nibbles_hi(w, ql + 32), w, qh, 6), xq, xo + 96, scale_pair(w, sc + 6))
    d = f16_of(w, o + 208) * xd[B]
    acc = fma(acc, add(lo, hi), d)
    # the bias 32 sum_j sc_j bs16[j], lane j of each half: scales 0..7, then 8..15
    bias = add(mul(int8x8(w, o + 192), load_i32x8(bs16, 16 * B)),
               mul(int8x8(w, o + 200), load_i32x8(bs16, 16 * B + 8)))
    return fma(acc, bias, np.float32(-32.0) * d)


# Four rows of Q4_K, two at a time: a super-block of each of the two rows per step, into
# 8 float lanes a row.  Four rows in one loop need more than the 32 vector registers (each
# row's scales and mins on top of the shared x), and the spilled values, stored and
# reloaded in every step, made the speed depend on where x happened to lie in memory:
# 14.6 to 18.0 GB/s on one core, by its offset in a cache line.  Two rows never spill:
# 17.3 GB/s at every offset (scripts/bench_kernels.py, 5632 x 2048).
@njit(fastmath=FASTMATH, inline="never")
def dot4_int8_q4_K(w0, w1, w2, w3, xr, lut):
    xq, xd, bs32 = xr
    a0, a1 = _dot2_q4_K(w0, w1, xq, xd, bs32)
    a2, a3 = _dot2_q4_K(w2, w3, xq, xd, bs32)
    return a0, a1, a2, a3


@njit(fastmath=FASTMATH, inline="always")
def _dot2_q4_K(w0, w1, xq, xd, bs32):
    a0, a1 = zeros_f32x8(), zeros_f32x8()
    for B in range(xd.shape[0]):
        o = 144 * B
        fetch_ahead(w0, o, 144)
        fetch_ahead(w1, o, 144)
        a0, a1 = _q4_K_row(a0, w0, o, B, xq, xd, bs32), _q4_K_row(a1, w1, o, B, xq, xd, bs32)
    return hsum(a0), hsum(a1)


# Q6_K's four rows fit the registers: one super-block of each row per step.
@njit(fastmath=FASTMATH, inline="never")
def dot4_int8_q6_K(w0, w1, w2, w3, xr, lut):
    xq, xd, bs16 = xr
    a0, a1, a2, a3 = zeros_f32x8(), zeros_f32x8(), zeros_f32x8(), zeros_f32x8()
    for B in range(xd.shape[0]):
        o = 210 * B
        fetch_ahead4(w0, w1, w2, w3, o, 210)
        a0, a1 = _q6_K_row(a0, w0, o, B, xq, xd, bs16), _q6_K_row(a1, w1, o, B, xq, xd, bs16)
        a2, a3 = _q6_K_row(a2, w2, o, B, xq, xd, bs16), _q6_K_row(a3, w3, o, B, xq, xd, bs16)
    return hsum(a0), hsum(a1), hsum(a2), hsum(a3)


# ---- decode with x as it is ---------------------------------------------------------------------
# Per sub-block the Q4_K sum is  d sc_j (q . x) - dmin m_j sum(x): the same shape as Q4_1.
@njit(fastmath=FASTMATH, inline="never")
def dot4_float_q4_K(w0, w1, w2, w3, xr, lut):
    x, xsum = xr
    a0 = a1 = a2 = a3 = np.float32(0.0)
    n = x.shape[0] // xsum.shape[0]                # 32 weights per sub-block, known at run time
    for B in range(x.shape[0] // 256):
        o = B * 144
        d0, d1, d2, d3 = f16_at(w0, o, lut), f16_at(w1, o, lut), f16_at(w2, o, lut), f16_at(w3, o, lut)
        m0, m1, m2, m3 = (f16_at(w0, o + 2, lut), f16_at(w1, o + 2, lut), f16_at(w2, o + 2, lut),
                          f16_at(w3, o + 2, lut))
        for p in range(4):
            q, xo = o + 16 + n * p, B * 256 + 2 * n * p
            l0 = l1 = l2 = l3 = h0 = h1 = h2 = h3 = np.float32(0.0)
            for k in range(n):
                xl, xh = x[xo + k], x[xo + n + k]
                c0, c1, c2, c3 = w0[q + k], w1[q + k], w2[q + k], w3[q + k]
                l0 += np.float32(lo(c0)) * xl
                h0 += np.float32(hi(c0)) * xh
                l1 += np.float32(lo(c1)) * xl
                h1 += np.float32(hi(c1)) * xh
                l2 += np.float32(lo(c2)) * xl
                h2 += np.float32(hi(c2)) * xh
                l3 += np.float32(lo(c3)) * xl
                h3 += np.float32(hi(c3)) * xh
            xs_lo, xs_hi = xsum[8 * B + 2 * p], xsum[8 * B + 2 * p + 1]
            a0 += _q4_K_pair(w0, o, p, d0, m0, l0, h0, xs_lo, xs_hi)
            a1 += _q4_K_pair(w1, o, p, d1, m1, l1, h1, xs_lo, xs_hi)
            a2 += _q4_K_pair(w2, o, p, d2, m2, l2, h2, xs_lo, xs_hi)
            a3 += _q4_K_pair(w3, o, p, d3, m3, l3, h3, xs_lo, xs_hi)
    return a0, a1, a2, a3


@njit(inline="always")
def _q4_K_pair(row, o, p, d, dmin, s_lo, s_hi, xs_lo, xs_hi):
    """sub-blocks 2p and 2p+1 of one row: d sc (q . x) - dmin m sum(x), for both"""
    sc0, m0 = scale_min_at(row, o + 4, 2 * p)
    sc1, m1 = scale_min_at(row, o + 4, 2 * p + 1)
    return (d * (np.float32(sc0) * s_lo + np.float32(sc1) * s_hi)
            - dmin * (np.float32(m0) * xs_lo + np.float32(m1) * xs_hi))


@njit(inline="always")
def q6(nibble, two_bits):
    """a 6-bit code minus its bias of 32, as int8 (narrow, as common.lo/hi)"""
    return np.int8(np.uint8(nibble | two_bits) - np.uint8(32))


@njit(inline="always")
def _q6_K_16(row, x, ql, qh, xo, l0, n, sc, o_d, lut):
    """One row, bytes l in [l0, l0 + n) of a half (n = 16): the four sub-blocks they
    feed, each summed as q . x and scaled by d sc_j."""
    s1 = s2 = s3 = s4 = np.float32(0.0)
    for l in range(l0, l0 + n):
        a, b, c = row[ql + l], row[ql + 32 + l], row[qh + l]
        s1 += np.float32(q6(lo(a), np.uint8((c & 3) << 4))) * x[xo + l]
        s2 += np.float32(q6(lo(b), np.uint8((c & 12) << 2))) * x[xo + 32 + l]
        s3 += np.float32(q6(hi(a), np.uint8(c & 48))) * x[xo + 64 + l]
        s4 += np.float32(q6(hi(b), np.uint8((c >> 2) & 48))) * x[xo + 96 + l]
    return f16_at(row, o_d, lut) * (np.float32(np.int8(row[sc])) * s1 + np.float32(np.int8(row[sc + 2])) * s2
                                    + np.float32(np.int8(row[sc + 4])) * s3 + np.float32(np.int8(row[sc + 6])) * s4)


@njit(fastmath=FASTMATH, inline="never")
def dot4_float_q6_K(w0, w1, w2, w3, xr, lut):
    x, xsum = xr
    hb = x.shape[0] // xsum.shape[0] // 2          # 16 bytes l per group, known at run time
    a0 = a1 = a2 = a3 = np.float32(0.0)
    for B in range(x.shape[0] // 256):
        o = B * 210
        for h in range(2):
            ql, qh, xo = o + 64 * h, o + 128 + 32 * h, B * 256 + 128 * h
            for g in range(2):                       # bytes l in [16g, 16g + 16): sub-blocks 8h + g + {0,2,4,6}
                a0 += _q6_K_16(w0, x, ql, qh, xo, 16 * g, hb, o + 192 + 8 * h + g, o + 208, lut)
                a1 += _q6_K_16(w1, x, ql, qh, xo, 16 * g, hb, o + 192 + 8 * h + g, o + 208, lut)
                a2 += _q6_K_16(w2, x, ql, qh, xo, 16 * g, hb, o + 192 + 8 * h + g, o + 208, lut)
                a3 += _q6_K_16(w3, x, ql, qh, xo, 16 * g, hb, o + 192 + 8 * h + g, o + 208, lut)
    return a0, a1, a2, a3


# ---- the kernels: the row drivers with each format's pieces -------------------------------------
@njit
def x_q4_K(x):
    return x_q8_K(x, 32)


@njit
def x_q6_K(x):
    return x_q8_K(x, 16)


@njit
def xT_q4_K(x):
    return x_blocks(x, ACT_Q8_K, 32, 0)


@njit
def xT_q6_K(x):
    return x_blocks(x, ACT_Q8_K, 16, 32)


@njit(parallel=True)
def prefill_q2_K(w, x, y, act, lut, aux):
    prefill_rows(unpack_row_q2_K, w, x, y, act, lut, aux)


@njit(parallel=True)
def prefill_q3_K(w, x, y, act, lut, aux):
    prefill_rows(unpack_row_q3_K, w, x, y, act, lut, aux)


@njit(parallel=True)
def prefill_q4_K(w, x, y, act, lut, aux):
    prefill_rows(unpack_row_q4_K, w, x, y, act, lut, aux)


@njit(parallel=True)
def prefill_q5_K(w, x, y, act, lut, aux):
    prefill_rows(unpack_row_q5_K, w, x, y, act, lut, aux)


@njit(parallel=True)
def prefill_q6_K(w, x, y, act, lut, aux):
    prefill_rows(unpack_row_q6_K, w, x, y, act, lut, aux)


@njit(parallel=True)
def matvec_int8_q4_K(w0, w1, w2, x, y, lut):
    matvec_rows(dot4_int8_q4_K, x_q4_K, w0, w1, w2, x, y, lut)


@njit(parallel=True)
def prefill_int8_q4_K(w, x, y, lut):
    prefill_rows_int8(codes_q4_K, xT_q4_K, 4, w, x, y, lut)


@njit(parallel=True)
def matvec_float_q4_K(w0, w1, w2, x, y, lut):
    matvec_rows(dot4_float_q4_K, x_with_sums, w0, w1, w2, x, y, lut)


@njit(parallel=True)
def matvec_int8_q6_K(w0, w1, w2, x, y, lut):
    matvec_rows(dot4_int8_q6_K, x_q6_K, w0, w1, w2, x, y, lut)


@njit(parallel=True)
def prefill_int8_q6_K(w, x, y, lut):
    prefill_rows_int8(codes_q6_K, xT_q6_K, 6, w, x, y, lut)


@njit(parallel=True)
def matvec_float_q6_K(w0, w1, w2, x, y, lut):
    matvec_rows(dot4_float_q6_K, x_with_sums, w0, w1, w2, x, y, lut)


def _format(name, unpack, unpack_row, prefill, int8=(None, None), matvec_float=None):
    size = GGML_QUANT_SIZES[GGMLQuantizationType[name]][1]
    return QuantFormat(name, "q8_K", _dequantizer(unpack), _linear(unpack, size), unpack_row,
                       prefill=prefill, matvec_int8=int8[0], prefill_int8=int8[1],
                       matvec_float=matvec_float)


FORMATS = [
    _format("Q2_K", unpack_q2_K, unpack_row_q2_K, prefill_q2_K),
    _format("Q3_K", unpack_q3_K, unpack_row_q3_K, prefill_q3_K),
    _format("Q4_K", unpack_q4_K, unpack_row_q4_K, prefill_q4_K, (matvec_int8_q4_K, prefill_int8_q4_K),
            matvec_float_q4_K),
    _format("Q5_K", unpack_q5_K, unpack_row_q5_K, prefill_q5_K),
    _format("Q6_K", unpack_q6_K, unpack_row_q6_K, prefill_q6_K, (matvec_int8_q6_K, prefill_int8_q6_K),
            matvec_float_q6_K),
]
