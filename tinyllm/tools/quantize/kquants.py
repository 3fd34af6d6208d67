"""k-quants: float32 super-blocks of 256 -> Q2_K, Q3_K, Q4_K, Q5_K, Q6_K bytes.

The byte layouts are drawn in tinyllm/quant/kquants.py.  Every k-quant is two-level:
each sub-block (16 or 32 weights) gets its own float scale (and, for Q2_K/Q4_K/Q5_K,
a min) from a small search, then those sub-block scales are themselves quantized to
4, 6 or 8 bits against one f16 super-scale d (and dmin), and finally the weights are
re-rounded against the scales as stored.  This re-implements llama.cpp's reference
quantizers (ggml-quants.c, quantize_row_q*_K_ref with make_qx_quants, make_q3_quants,
make_qkx2_quants), which its model quantizer runs when there is no importance matrix.

Vectorisation.  A search is sequential per sub-block (each candidate starts from the
best found so far), so it runs over all sub-blocks of the chunk at once, with the
sub-blocks laid out as columns: x (n, S) for S sub-blocks of n weights.  Per-sub-block
quantities are then (S,) rows, and a sum over the n weights, np.add.reduce over
axis 0, adds row after row -- in the same order as the C loop, so the float32 sums
(and the choices made by comparing them) come out as in llama.cpp.

Rounding: nearest_int() (half to even) everywhere; q's are clipped to their range.
"""

from __future__ import annotations

import numpy as np

from .blocks import F32, f16_bytes, nearest_int, round_f16, signed_absmax

QK_K = 256
GROUP_MAX_EPS = F32(1e-15)      # below this max|x| a group counts as all zero


def columns(x, n):
    """blocks (nb, 256) -> (n, nb * 256/n): column s is sub-block s (row-major over blocks)."""
    return np.ascontiguousarray(x.reshape(-1, n).T)


def rows_of(L, nb):
    """(n, S) per-sub-block columns -> (nb, 256), back in weight order."""
    return np.ascontiguousarray(L.T).reshape(nb, QK_K)


def round_clip(v, lo, hi):
    """clip(nearest_int(v), lo, hi) as float32, in place (v is overwritten).
    ggml's nearest_int maps inf and NaN through their bit patterns: NaN -> 0 and
    +-inf -> -2^22 (so clipped to lo).  They appear where a group is degenerate, e.g.
    max - min so small that 1/(max - min) overflows, and must come out the same.  (Finite
    values beyond 2^22, where the trick breaks down too, do not occur: every rounded
    quantity is a weight divided by a scale fitted to those weights.)"""
    np.rint(v, out=v)
    if not np.isfinite(v).all():
        bad = ~np.isfinite(v)
        v[bad] = np.where(np.isnan(v[bad]), F32(0), F32(-(1 << 22)))
    return np.clip(v, lo, hi, out=v)


def colsum(a):
    """(n, S) -> (S,): sum over the n weights of each sub-block, in index order."""
    return np.add.reduce(a, axis=0)


# ---- the sub-block searches ---------------------------------------------------------------------
def make_qx_quants(x, nmax):
    """Symmetric scale search (Q6_K; rmse_type 1, no importance weights): x ~ s * l with
    l in [-nmax, nmax-1].  Minimises the weighted error  sum_i w_i (x_i - s l_i)^2,
    w_i = x_i^2 (big weights matter most).  For fixed l the best s is sum w x l / sum w l^2,
    and the error then is  sum w x^2 - (sum w x l)^2 / sum w l^2,  so a candidate is better
    when (sum w x l)^2 / sum w l^2 is larger.  Candidates: l = round(x * iscale) with
    iscale = -(nmax + 0.1 k) / m, k = 0, -9..9, m the signed element of largest |x|
    (so m itself lands on -nmax, the end of the range that has one more level).
    x (n, S) -> s (S,), L (n, S) = l + nmax."""
    m = signed_absmax(x, axis=0)
    w = x * x
    wx = w * x
    l, tmp = np.empty_like(x), np.empty_like(x)

    def candidate(iscale):
        round_clip(np.multiply(x, iscale, out=l), -nmax, nmax - 1)
        sumlx = colsum(np.multiply(wx, l, out=tmp))
        suml2 = colsum(np.multiply(np.multiply(w, l, out=tmp), l, out=tmp))
        return sumlx, suml2

    # Only the winning iscale of each sub-block is kept; its l's are recomputed at the end
    # (the same float ops give the same l: cheaper than a masked copy per candidate).
    best_iscale = F32(-nmax) / m
    sumlx, suml2 = candidate(best_iscale)
    scale = np.where(suml2 != 0, sumlx / suml2, F32(0))
    best = scale * sumlx
    for k in range(-9, 10):
        if k == 0:
            continue
        iscale = -(F32(nmax) + F32(0.1) * F32(k)) / m
        sumlx, suml2 = candidate(iscale)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        best_iscale = np.where(better, iscale, best_iscale)
        scale = np.where(better, sumlx / suml2, scale)
        best = np.where(better, scale * sumlx, best)
    zero = np.abs(m) < GROUP_MAX_EPS
    L = round_clip(np.multiply(x, best_iscale, out=l), -nmax, nmax - 1)
    L += nmax
    L *= ~zero
    return np.where(zero, F32(0), scale), L


def make_q3_quants(x, nmax):
    """Q3_K's search: the same weighted error as make_qx_quants (w = x^2, x ~ s l, l in
    [-nmax, nmax-1]) but, starting from l = round(-nmax x / m), it moves one weight at a
    time: with the other l's fixed, the best l_i for the optimal s is round(x_i / s_i) where
    s_i = sum_{j!=i} w x l / sum_{j!=i} w l^2; the move is kept if it raises
    (sum w x l)^2 / sum w l^2.  Up to 5 passes over i, stopping when a pass changes nothing.
    x (n, S) -> s (S,), L (n, S) = l + nmax."""
    m = signed_absmax(x, axis=0)
    w = x * x
    wx = w * x
    L = round_clip(F32(-nmax) / m * x, -nmax, nmax - 1)
    sumlx = colsum(wx * L)
    suml2 = colsum(w * L * L)
    for _ in range(5):
        changed = False
        for i in range(x.shape[0]):
            li = L[i]
            slx = sumlx - wx[i] * li
            sl2 = suml2 - w[i] * li * li
            new = round_clip(x[i] * sl2 / slx, -nmax, nmax - 1)
            slx_new = slx + wx[i] * new
            sl2_new = sl2 + w[i] * new * new
            ok = ((slx > 0) & (new != li) & (sl2_new > 0)
                  & (slx_new * slx_new * suml2 > sumlx * sumlx * sl2_new))
            if ok.any():
                changed = True
                np.copyto(li, new, where=ok)
                sumlx = np.where(ok, slx_new, sumlx)
                suml2 = np.where(ok, sl2_new, suml2)
        if not changed:      # a pass that changes nothing would change nothing again
            break
    scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
    zero = np.abs(m) < GROUP_MAX_EPS
    return np.where(zero, F32(0), scale), np.where(zero, F32(0), L + nmax)


def make_qkx2_quants(x, w, nmax, rmin, rdelta, nstep, use_mad):
    """Scale-and-min search (Q2_K, Q4_K, Q5_K): x ~ s l + mn with l in [0, nmax], mn <= 0.
    Minimises  sum_i w_i |s l_i + mn - x_i|^p  (p = 2, or p = 1 for Q2_K's use_mad).
    Start: mn = min(x, 0), s = (max - mn) / nmax.  Then for iscale = (nmax + rmin + k rdelta)
    / (max - mn), k = 0..nstep, round l = round((x - mn) iscale) and refit s, mn by weighted
    least squares on those l (2x2 normal equations; if the fitted mn > 0 it is set to 0 and
    s refit alone); keep the candidate if its error is lower.  mn is the best so far, so
    each candidate grid starts from the current best offset.
    x, w (n, S) -> s (S,), -mn (S,), L (n, S)."""
    mn = mn0 = np.minimum(x.min(axis=0), F32(0))
    mx = x.max(axis=0)
    flat = mx == mn
    sum_w = colsum(w)
    sum_x = colsum(w * x)
    tmp = np.empty_like(x)

    def error(s, b, l):
        """sum_i w_i |s l_i + b - x_i|^p, in C's order of operations."""
        d = np.multiply(l, s, out=tmp)
        d += b
        d -= x
        if use_mad:
            np.abs(d, out=d)
        else:
            d *= d
        return colsum(np.multiply(w, d, out=d))

    # Only the winning grid (its offset mn and iscale) of each sub-block is kept; its l's
    # are recomputed at the end with the same float ops, so they come out the same.
    best_mn = mn
    best_iscale = F32(nmax) / np.where(flat, F32(1), mx - mn)
    scale = F32(1) / best_iscale
    l, wl = np.empty_like(x), np.empty_like(x)

    def grid(mn, iscale):
        """l = clip(round((x - mn) * iscale), 0, nmax), into l."""
        return round_clip(np.multiply(np.subtract(x, mn, out=l), iscale, out=l), 0, nmax)

    best = error(scale, mn, grid(mn, best_iscale))
    for k in range(nstep + 1):
        iscale = (F32(rmin) + F32(rdelta) * F32(k) + F32(nmax)) / (mx - mn)
        grid(mn, iscale)
        np.multiply(w, l, out=wl)
        sum_l = colsum(wl)
        sum_l2 = colsum(np.multiply(wl, l, out=tmp))
        sum_xl = colsum(np.multiply(wl, x, out=tmp))
        D = sum_w * sum_l2 - sum_l * sum_l
        s = (sum_w * sum_xl - sum_x * sum_l) / D
        b = (sum_l2 * sum_x - sum_l * sum_xl) / D
        pos = b > 0
        b = np.where(pos, F32(0), b)
        s = np.where(pos, sum_xl / sum_l2, s)
        err = error(s, b, l)
        better = (D > 0) & (err < best)
        best = np.where(better, err, best)
        best_mn = np.where(better, mn, best_mn)
        best_iscale = np.where(better, iscale, best_iscale)
        scale = np.where(better, s, scale)
        mn = np.where(better, b, mn)
    L = grid(best_mn, best_iscale)
    L *= ~flat
    return np.where(flat, F32(0), scale), -np.where(flat, mn0, mn), L


# ---- Q2_K: scales[16] | qs[64] | d f16 | dmin f16 -----------------------------------------------
def pack_2bit(L):
    """(nb, 256) in 0..3 -> (nb, 64): qs[32h + l] holds elements 128h + 32s + l at bits 2s."""
    q = L.astype(np.uint8).reshape(-1, 2, 4, 32) << (2 * np.arange(4, dtype=np.uint8))[:, None]
    return np.bitwise_or.reduce(q, axis=2).reshape(-1, 64)


def quantize_q2_K(x):
    """Sub-blocks of 16: scale and min by make_qkx2_quants (w = |x|, least absolute error),
    then both quantized to 4 bits against d = max scale / 15 and dmin = max min / 15."""
    nb = x.shape[0]
    xc = columns(x, 16)
    # grids of 2.5 .. 4 steps across [mn, max] in 0.1 steps
    scale, mins, L = make_qkx2_quants(xc, np.abs(xc), 3, -0.5, 0.1, 15, True)
    scale, mins, L = scale.reshape(nb, 16), mins.reshape(nb, 16), rows_of(L, nb)
    max_scale = np.maximum(scale.max(axis=1), F32(0))
    max_min = np.maximum(mins.max(axis=1), F32(0))
    has_s, has_m = max_scale > 0, max_min > 0
    ls = nearest_int(np.where(has_s, F32(15) / max_scale, F32(0))[:, None] * scale)
    lm = nearest_int(np.where(has_m, F32(15) / max_min, F32(0))[:, None] * mins)
    sc = ((ls & 0xFF) | (lm << 4)).astype(np.uint8)   # stored as uint8, as in C
    d = np.where(has_s, max_scale / F32(15), F32(0))
    dmin = np.where(has_m, max_min / F32(15), F32(0))
    # re-round the weights against the scales as stored: x ~ d sc q - dmin m
    dl = (round_f16(d)[:, None] * (sc & 15).astype(F32))
    ml = (round_f16(dmin)[:, None] * (sc >> 4).astype(F32))
    dl16, ml16 = np.repeat(dl, 16, axis=1), np.repeat(ml, 16, axis=1)
    L = np.where(dl16 != 0, round_clip((x + ml16) / dl16, 0, 3), L)
    return np.concatenate([sc, pack_2bit(L), f16_bytes(d), f16_bytes(dmin)], axis=1)


# ---- Q3_K: hmask[32] | qs[64] | scales[12] | d f16 ----------------------------------------------
def quantize_q3_K(x):
    """Sub-blocks of 16: signed scale by make_q3_quants (q in -4..3), then the 16 scales
    quantized to 6 bits signed against d = m / -32, m the scale of largest magnitude."""
    nb = x.shape[0]
    scale, L = make_q3_quants(columns(x, 16), 4)
    scale, L = scale.reshape(nb, 16), rows_of(L, nb)
    m = signed_absmax(scale)
    has = m != 0
    iscale = np.where(has, F32(-32) / np.where(has, m, F32(1)), F32(0))
    l = np.where(has[:, None], np.clip(nearest_int(iscale[:, None] * scale), -32, 31) + 32, 0)
    l = l.astype(np.uint8)                               # 0..63; all 0 (sc = -32) if m == 0
    sc12 = np.empty((nb, 12), np.uint8)
    sc12[:, 0:8] = (l[:, 0:8] & 15) | ((l[:, 8:16] & 15) << 4)
    hi = (l.reshape(nb, 4, 4) >> 4) << (2 * np.arange(4, dtype=np.uint8))[:, None]
    sc12[:, 8:12] = np.bitwise_or.reduce(hi, axis=1)
    d = np.where(has, F32(1) / np.where(has, iscale, F32(1)), F32(0))
    dl = np.repeat(round_f16(d)[:, None] * (l.astype(F32) - F32(32)), 16, axis=1)
    L = np.where(dl != 0, round_clip(x / dl, -4, 3) + 4, L).astype(np.uint8)
    # bit 2 of element j goes to bit j // 32 of hmask[j % 32]; the low 2 bits to qs
    hbit = (L >> 2).reshape(nb, 8, 32) << np.arange(8, dtype=np.uint8)[:, None]
    hmask = np.bitwise_or.reduce(hbit, axis=1)
    return np.concatenate([hmask, pack_2bit(L & 3), sc12, f16_bytes(d)], axis=1)


# ---- Q4_K / Q5_K: d f16 | dmin f16 | scales[12] | [qh[32]] | qs[128] ------------------------------
def pack_scale_min_k4(ls, lm):
    """8 six-bit scales and mins -> 12 bytes (the inverse of quant.kquants.scale_min_k4)."""
    sc12 = np.empty((ls.shape[0], 12), np.uint8)
    sc12[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    sc12[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    sc12[:, 8:12] = (ls[:, 4:] & 15) | ((lm[:, 4:] & 15) << 4)
    return sc12


def _q4_5_K(x, nmax, rmin, rdelta, nstep):
    """Sub-blocks of 32: scale and min by make_qkx2_quants with w = rms(sub-block) + |x|,
    then both quantized to 6 bits against d = max scale / 63, dmin = max min / 63.
    Returns the 12 scale bytes, d, dmin and q (nb, 256) in 0..nmax."""
    nb = x.shape[0]
    xc = columns(x, 32)
    av_x = np.sqrt(np.add.reduce(xc * xc, axis=0) / F32(32))
    scale, mins, L = make_qkx2_quants(xc, av_x + np.abs(xc), nmax, rmin, rdelta, nstep, False)
    scale, mins, L = scale.reshape(nb, 8), mins.reshape(nb, 8), rows_of(L, nb)
    max_scale = np.maximum(scale.max(axis=1), F32(0))
    max_min = np.maximum(mins.max(axis=1), F32(0))
    inv_s = np.where(max_scale > 0, F32(63) / np.where(max_scale > 0, max_scale, 1), F32(0))
    inv_m = np.where(max_min > 0, F32(63) / np.where(max_min > 0, max_min, 1), F32(0))
    # uint8_t ls = nearest_int(..); MIN(63, ls)
    ls = np.minimum(nearest_int(inv_s[:, None] * scale) & 0xFF, 63).astype(np.uint8)
    lm = np.minimum(nearest_int(inv_m[:, None] * mins) & 0xFF, 63).astype(np.uint8)
    d, dmin = max_scale / F32(63), max_min / F32(63)
    dl = np.repeat(round_f16(d)[:, None] * ls.astype(F32), 32, axis=1)
    ml = np.repeat(round_f16(dmin)[:, None] * lm.astype(F32), 32, axis=1)
    L = np.where(dl != 0, round_clip((x + ml) / dl, 0, nmax), L).astype(np.uint8)
    return pack_scale_min_k4(ls, lm), d, dmin, L


def quantize_q4_K(x):
    sc12, d, dmin, L = _q4_5_K(x, 15, -1.0, 0.1, 20)   # grids of 14 .. 16 steps
    q = L.reshape(-1, 4, 2, 32)                         # qs[32p + l]: 64p + l | 64p + 32 + l
    qs = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate([f16_bytes(d), f16_bytes(dmin), sc12, qs], axis=1)


def quantize_q5_K(x):
    sc12, d, dmin, L = _q4_5_K(x, 31, -0.5, 0.1, 15)   # grids of 30.5 .. 32 steps
    q = L.reshape(-1, 8, 32)                            # [2p + h]: elements 64p + 32h + l
    qh = np.bitwise_or.reduce((q >> 4) << np.arange(8, dtype=np.uint8)[:, None], axis=1)
    q = (q & 15).reshape(-1, 4, 2, 32)
    qs = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate([f16_bytes(d), f16_bytes(dmin), sc12, qh, qs], axis=1)


# ---- Q6_K: ql[128] | qh[64] | scales[16] int8 | d f16 -------------------------------------------
def quantize_q6_K(x):
    """Sub-blocks of 16: signed scale by make_qx_quants (q in -32..31), then the 16 scales
    to int8 against d = m / -128, m the scale of largest magnitude."""
    nb = x.shape[0]
    scale, L = make_qx_quants(columns(x, 16), 32)
    scale, L = scale.reshape(nb, 16), rows_of(L, nb)
    m = signed_absmax(scale)
    empty = np.abs(m) < GROUP_MAX_EPS                    # such a block is stored as all zeros
    iscale = F32(-128) / np.where(empty, F32(1), m)
    sc = np.minimum(nearest_int(iscale[:, None] * scale), 127)
    d = F32(1) / iscale
    dl = np.repeat(round_f16(d)[:, None] * sc.astype(F32), 16, axis=1)
    L = np.where(dl != 0, round_clip(x / dl, -32, 31) + 32, L).astype(np.uint8)
    q = L.reshape(nb, 2, 4, 32)                          # [h, s, l] = element 128h + 32s + l
    ql = (q[:, :, 0:2] & 15) | ((q[:, :, 2:4] & 15) << 4)
    qh = np.bitwise_or.reduce((q >> 4) << (2 * np.arange(4, dtype=np.uint8))[:, None], axis=2)
    out = np.concatenate([ql.reshape(nb, 128), qh.reshape(nb, 64),
                          sc.astype(np.int8).view(np.uint8), f16_bytes(d)], axis=1)
    out[empty] = 0
    return out
