"""Scaled dot-product attention over the KV cache, with grouped-query heads.

    out_h = softmax(q_h K_g^T * scale + mask) V_g        g = h // (n_head / n_head_kv)

Grouped-query attention (Ainslie et al. 2023): n_head query heads share n_head_kv
key/value heads, consecutive query heads sharing one KV head (as ggml broadcasts).
The mask is causal (query at position p sees keys 0..p) and, for sliding-window
layers, also hides keys older than `window` positions (p - window + 1..p stay).

Two ways to compute the same thing:

  classic   materialises the scores S = Q K^T, [n_head, n_query, n_kv] floats, softmaxes
            them row by row and multiplies by V.  Simple; memory grows with the context.
  flash     walks the keys in tiles of TILE cells and keeps, per query row, only a
            running max m, a running sum l and an output accumulator O (Milakov &
            Gimelshein 2018, "online softmax"; Dao et al. 2022, FlashAttention).  Nothing
            of size n_kv is ever stored, and a quantized cache is dequantized one tile
            at a time.

The tile loop, for one query row q and keys/values of one tile:

    S     = q K_tile^T * scale                       scores of this tile
    m_new = max(m, rowmax(S))                        the largest score so far
    P     = exp(S - m_new)                           this tile's softmax numerators
    l     = l * exp(m - m_new) + rowsum(P)           old sum, rescaled to the new max
    O     = O * exp(m - m_new) + P V_tile            old output, rescaled likewise
    m     = m_new
  and after the last tile:  out = O / l.

The flash kernel is numba; flash_attention_np is the same algorithm in numpy (the
reference for tests and readers, and the path without numba).
"""

from __future__ import annotations

import numpy as np

from .jit import FASTMATH, HAVE_NUMBA, get_threads, njit, prange
from .kvcache import (KVCache, KVView, dequantize_cells, quantize_f16_rows, quantize_q4_0_rows,
                      quantize_q8_0_rows)
from .ops import expf

if HAVE_NUMBA:
    from .quant.simd import fmadd, hsum, load_f32x8, splat, store_f32x8, zeros_f32x8

TILE = 32          # KV cells per tile: K and V tiles of 32 x head_dim floats stay in L1
BLOCK_Q = 16       # query rows a prefill work item takes: each K/V tile is dequantized once for them


def attention(q: np.ndarray, kv: KVView, pos: int, scale: float, window: int | None = None,
              flash: bool = True) -> np.ndarray:
    """q [T, n_head, Dk] for positions pos..pos+T-1 over the cached keys/values of one layer
    (kv.n_kv == pos + T) -> [T, n_head, Dv]."""
    window = int(window or 0)
    if not flash:
        return attention_classic(q, kv, pos, scale, window)
    if HAVE_NUMBA:
        return flash_attention(q, kv, pos, scale, window)
    return flash_attention_np(q, kv, pos, scale, window)


def visible_mask(q_pos: np.ndarray, k_pos: np.ndarray, window: int) -> np.ndarray:
    """[T, n]: key position k_pos is visible from query position q_pos."""
    visible = k_pos[None, :] <= q_pos[:, None]
    if window:
        visible &= k_pos[None, :] > q_pos[:, None] - window
    return visible


# ---- classic ----------------------------------------------------------------------------------
def attention_classic(q: np.ndarray, kv: KVView, pos: int, scale: float, window: int = 0) -> np.ndarray:
    """Materialises scores [n_head, T, n_kv]; the whole cache is dequantized first."""
    T, n_head, _ = q.shape
    k, v = kv.keys(), kv.values()                                      # [n, Hkv, Dk], [n, Hkv, Dv]
    n, n_head_kv, dv = v.shape
    group = n_head // n_head_kv
    qg = q.reshape(T, n_head_kv, group, -1).transpose(1, 2, 0, 3)     # [Hkv, group, T, Dk]
    kt = k.transpose(1, 2, 0)                                          # [Hkv, Dk, n]
    vt = v.transpose(1, 0, 2)                                          # [Hkv, n, Dv]
    # One [Hkv, group, T, n] buffer, updated in place: the memory this path costs is
    # exactly the n_head x T x n_kv scores that flash attention never materialises.
    scores = qg @ kt[:, None]                                          # [Hkv, group, T, n]
    scores *= np.float32(scale)
    visible = visible_mask(pos + np.arange(T), kv.first + np.arange(n), window)
    np.copyto(scores, np.float32(-np.inf), where=~visible)
    # softmax over the keys: exp(s - max) / sum, max subtracted so exp cannot overflow
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    out = scores @ vt[:, None]                                         # [Hkv, group, T, Dv]
    return out.transpose(2, 0, 1, 3).reshape(T, n_head, dv)


# ---- flash: numpy reference -------------------------------------------------------------------
def flash_attention_np(q: np.ndarray, kv: KVView, pos: int, scale: float, window: int = 0,
                       tile: int = 256) -> np.ndarray:
    """The tile loop above, for all heads and query rows at once.  (numpy pays per call,
    so its tiles are larger than the numba kernel's.)"""
    T, n_head, dk = q.shape
    n_head_kv = kv.n_head_kv
    group = n_head // n_head_kv
    qg = q.reshape(T, n_head_kv, group, dk).transpose(1, 2, 0, 3)     # [Hkv, group, T, Dk]
    q_pos = pos + np.arange(T)
    lo = max(kv.first, pos - window + 1) if window else kv.first      # oldest key any row sees

    m = np.full((n_head_kv, group, T), -np.inf, np.float32)           # running max
    l = np.zeros((n_head_kv, group, T), np.float32)                   # running sum
    o = np.zeros((n_head_kv, group, T, kv.head_dim_v), np.float32)    # output accumulator
    for c0 in range(lo, kv.n_kv, tile):
        k_pos = np.arange(c0, min(c0 + tile, kv.n_kv))
        k_t = kv.keys(k_pos).transpose(1, 2, 0)                        # [Hkv, Dk, n]
        v_t = kv.values(k_pos).transpose(1, 0, 2)                      # [Hkv, n, Dv]
        # S = Q K^T * scale, masked              [Hkv, group, T, n]
        s = (qg @ k_t[:, None]) * np.float32(scale)
        s = np.where(visible_mask(q_pos, k_pos, window), s, -np.inf)
        # m_new = max(m, rowmax(S)); rows that see nothing yet keep -inf, and use 0 as the
        # reference so that exp(-inf - -inf) never happens
        m_new = np.maximum(m, s.max(axis=-1))
        m_ref = np.where(m_new == -np.inf, np.float32(0), m_new)
        # P = exp(S - m_new);   alpha = exp(m - m_new)
        p = np.exp(s - m_ref[..., None])
        alpha = np.exp(m - m_ref)
        # l = l * alpha + rowsum(P);   O = O * alpha + P V
        l = l * alpha + p.sum(axis=-1)
        o = o * alpha[..., None] + p @ v_t[:, None]
        m = m_new
    out = o / l[..., None]                                             # out = O / l
    return out.transpose(2, 0, 1, 3).reshape(T, n_head, -1)


# ---- flash: numba -----------------------------------------------------------------------------
# The kernels index whole arrays instead of slicing rows out of them: a slice bumps the
# array's reference count, an atomic op the threads would fight over in the inner loops.

# Inlined (numba IR), so that one compiled copy of it exists: as a separate function
# numba compiled it twice, on its own and again inside each kernel, and with reassociation
# allowed the two copies summed in different orders -- the process that compiled the
# kernels ran one, a process loading them from the disk cache the other, and a chat's
# answer changed between the first run after an install and the next.
@njit(fastmath=FASTMATH, inline="always")
def online_softmax_step(q, r0, r1, k, v, a, b, scale, m, l, o, s):
    """Fold tile rows a..b-1 into query rows r0..r1-1 (the heads of one query position,
    which see the same keys).  q [n_rows, Dk]; k [TILE, Dk], v [TILE, Dv] the tile;
    m, l [n_rows] running max and sum; o [n_rows, Dv] output accumulator; s [group, TILE]."""
    for r in range(r0, r1):
        sr = s[r - r0]
        # S = q K^T * scale;   m_new = max(m, rowmax(S))
        m_new = max(m[r], tile_scores(q, r, k, a, b, scale, sr))
        # alpha = exp(m - m_new) rescales what was summed under the old max (0 on the first tile)
        alpha = np.exp(m[r] - m_new)
        # P = exp(S - m_new);   l = l * alpha + rowsum(P)
        total = l[r] * alpha
        p = sr[a:b]            # indexed from 0: a loop from a, which might be negative for all
        for i in range(p.shape[0]):         # LLVM knows, wraps indices and is left scalar
            p[i] = expf(p[i] - m_new)    # ops.expf: vectorized
            total += p[i]
        m[r], l[r] = m_new, total
        # O = O * alpha + P V
        for d in range(o.shape[1]):
            o[r, d] *= alpha
        add_pv(o, r, sr, v, a, b)


# The two products of the tile loop, written with simd.py's 8-lane vectors (k, v, o and q
# are dense, so k[i, d] is k's flat element i * Dk + d).  Both are chains of multiply-adds,
# each waiting ~4 cycles on the one before: a dot product a cell (the plain loop) kept one
# chain going at a time, and 32 columns of O four.  Four cells, and 64 columns, keep
# enough chains going to fill the FPU.  One decode call at SmolLM2's shapes on one thread
# of a Zen 3 (AVX2), old and new alternating in one process: scores 27.4 -> 25.3 us at 170
# cells and 137 -> 126 at 1,024; P V a further 3-4 %.
@njit(fastmath=FASTMATH, inline="always")
def tile_scores(q, r, k, a, b, scale, sr):
    """sr[a:b] = q[r] . k[a:b] * scale, and their max.  Four cells at a time: the four dot
    products share each load of q and sum in four independent registers."""
    dk = q.shape[1]
    mx = np.float32(-np.inf)
    i = a
    if dk % 8 == 0:
        while i + 4 <= b:
            a0, a1, a2, a3 = zeros_f32x8(), zeros_f32x8(), zeros_f32x8(), zeros_f32x8()
            for d in range(0, dk, 8):
                qd = load_f32x8(q, r * dk + d)
                a0 = fmadd(a0, qd, load_f32x8(k, i * dk + d))
                a1 = fmadd(a1, qd, load_f32x8(k, (i + 1) * dk + d))
                a2 = fmadd(a2, qd, load_f32x8(k, (i + 2) * dk + d))
                a3 = fmadd(a3, qd, load_f32x8(k, (i + 3) * dk + d))
            sr[i], sr[i + 1] = hsum(a0) * scale, hsum(a1) * scale
            sr[i + 2], sr[i + 3] = hsum(a2) * scale, hsum(a3) * scale
            mx = max(mx, max(max(sr[i], sr[i + 1]), max(sr[i + 2], sr[i + 3])))
            i += 4
    for i in range(i, b):                      # the last cells, and head sizes not a multiple of 8
        dot = np.float32(0)
        for d in range(dk):
            dot += q[r, d] * k[i, d]
        sr[i] = dot * scale
        mx = max(mx, sr[i])
    return mx


@njit(fastmath=FASTMATH, inline="always")
def add_pv(o, r, sr, v, a, b):
    """o[r] += sum over cells i = a..b-1 of sr[i] v[i]: 64 columns of o[r] at a time, held in
    eight 8-lane registers across all the cells."""
    dv = o.shape[1]
    wide = dv - dv % 64
    for d0 in range(0, wide, 64):
        f = r * dv + d0
        o0, o1, o2, o3 = load_f32x8(o, f), load_f32x8(o, f + 8), load_f32x8(o, f + 16), load_f32x8(o, f + 24)
        o4, o5 = load_f32x8(o, f + 32), load_f32x8(o, f + 40)
        o6, o7 = load_f32x8(o, f + 48), load_f32x8(o, f + 56)
        for i in range(a, b):
            p, e = splat(sr[i]), i * dv + d0
            o0, o1 = fmadd(o0, load_f32x8(v, e), p), fmadd(o1, load_f32x8(v, e + 8), p)
            o2, o3 = fmadd(o2, load_f32x8(v, e + 16), p), fmadd(o3, load_f32x8(v, e + 24), p)
            o4, o5 = fmadd(o4, load_f32x8(v, e + 32), p), fmadd(o5, load_f32x8(v, e + 40), p)
            o6, o7 = fmadd(o6, load_f32x8(v, e + 48), p), fmadd(o7, load_f32x8(v, e + 56), p)
        store_f32x8(o, f, o0)
        store_f32x8(o, f + 8, o1)
        store_f32x8(o, f + 16, o2)
        store_f32x8(o, f + 24, o3)
        store_f32x8(o, f + 32, o4)
        store_f32x8(o, f + 40, o5)
        store_f32x8(o, f + 48, o6)
        store_f32x8(o, f + 56, o7)
    for d in range(wide, dv):                  # head sizes that are not a multiple of 64
        for i in range(a, b):
            o[r, d] += sr[i] * v[i, d]


@njit(fastmath=FASTMATH)
def attend_block(q, k_raw, v_raw, fmt, g, t0, t1, c_lo, c_hi, pos, scale, window,
                 split, m_out, l_out, o_out):
    """Query rows t0..t1-1, all query heads of KV head g, against cells c_lo..c_hi-1.
    Writes the unnormalised state to m_out[split], l_out[split] [T, H] and o_out[split]
    [T, H, Dv]: KV splits are merged afterwards (merge_splits)."""
    n_head, dk, dv = q.shape[1], q.shape[2], o_out.shape[3]
    group = n_head // k_raw.shape[1]
    n_rows = (t1 - t0) * group                    # row r: query t0 + r // group, head g*group + r % group
    qr = np.empty((n_rows, dk), np.float32)
    m = np.full(n_rows, -np.inf, np.float32)
    l = np.zeros(n_rows, np.float32)
    o = np.zeros((n_rows, dv), np.float32)
    for r in range(n_rows):
        for d in range(dk):
            qr[r, d] = q[t0 + r // group, g * group + r % group, d]
    k = np.empty((TILE, dk), np.float32)
    v = np.empty((TILE, dv), np.float32)
    s = np.empty((group, TILE), np.float32)
    for c0 in range(c_lo, c_hi, TILE):
        n = min(TILE, c_hi - c0)
        dequantize_cells(k_raw, g, c0, n, fmt, k)       # one dequantized tile serves every
        dequantize_cells(v_raw, g, c0, n, fmt, v)       # query row and head of the block
        for t in range(t0, t1):
            q_pos = pos + t
            a = max(c0, q_pos - window + 1) if window > 0 else c0      # the cells of this tile
            b = min(c0 + n, q_pos + 1)                                 # position q_pos sees: a..b-1
            if a < b:
                r0 = (t - t0) * group
                online_softmax_step(qr, r0, r0 + group, k, v, a - c0, b - c0, scale, m, l, o, s)
    for r in range(n_rows):
        t, h = t0 + r // group, g * group + r % group
        m_out[split, t, h], l_out[split, t, h] = m[r], l[r]
        for d in range(dv):
            o_out[split, t, h, d] = o[r, d]


@njit(fastmath=FASTMATH)
def merge_splits(m, l, o, t, out):
    """Combine the KV splits' states of query row t, every head:  M = max_s m_s,
    out = sum_s O_s exp(m_s - M) / sum_s l_s exp(m_s - M).
    m, l [n_split, T, H]; o [n_split, T, H, Dv]; out [T, H, Dv]."""
    for h in range(out.shape[1]):
        mx = m[0, t, h]
        for s in range(1, m.shape[0]):
            mx = max(mx, m[s, t, h])
        total = np.float32(0)
        for d in range(out.shape[2]):
            out[t, h, d] = 0.0
        for s in range(m.shape[0]):
            w = np.exp(m[s, t, h] - mx) if m[s, t, h] > -np.inf else np.float32(0)
            total += l[s, t, h] * w
            for d in range(out.shape[2]):
                out[t, h, d] += o[s, t, h, d] * w
        for d in range(out.shape[2]):
            out[t, h, d] /= total


@njit(inline="always")
def split_range(first, pos, t0, t1, window, s, n_split):
    """Cells split s of n_split covers for query rows t0..t1-1: the rows together see
    max(first, pos+t0-window+1) .. pos+t1-1; splits are whole tiles."""
    lo = max(first, pos + t0 - window + 1) if window > 0 else first
    hi = pos + t1
    n_tiles = (hi - lo + TILE - 1) // TILE
    per = (n_tiles + n_split - 1) // n_split
    return min(hi, lo + s * per * TILE), min(hi, lo + (s + 1) * per * TILE)


@njit
def flash_item(item, q, k_raw, v_raw, fmt, first, pos, scale, window, n_split, m, l, o):
    """Work item `item` of flash_kernel: (KV head g, block of BLOCK_Q query rows, KV split s)."""
    T = q.shape[0]
    n_qb = (T + BLOCK_Q - 1) // BLOCK_Q
    g, qb, s = item // (n_qb * n_split), (item // n_split) % n_qb, item % n_split
    t0 = qb * BLOCK_Q
    t1 = min(T, t0 + BLOCK_Q)
    c_lo, c_hi = split_range(first, pos, t0, t1, window, s, n_split)
    attend_block(q, k_raw, v_raw, fmt, g, t0, t1, c_lo, c_hi, pos, scale, window, s, m, l, o)


@njit(inline="always")
def flash_items(q, k_raw, v_raw, fmt, first, pos, scale, window, n_split, out):
    """out [T, H, Dv] = attention of q [T, H, Dk] (positions pos..pos+T-1) over the cells of
    k_raw, v_raw [n_cells, Hkv, row_bytes] (format fmt) holding positions first..pos+T-1.

    Work items, spread over the threads: (KV head g, block of BLOCK_Q query rows, KV split).
    An item takes all the query heads of group g, so each dequantized K/V tile serves
    group x BLOCK_Q query rows; splitting the KV range keeps the cores busy in decode,
    where there are only n_head_kv items otherwise.  Inlined into the two kernels below."""
    T, n_head = q.shape[0], q.shape[1]
    n_items = k_raw.shape[1] * ((T + BLOCK_Q - 1) // BLOCK_Q) * n_split
    m = np.empty((n_split, T, n_head), np.float32)
    l = np.empty((n_split, T, n_head), np.float32)
    o = np.empty((n_split, T, n_head, out.shape[2]), np.float32)
    sc = np.float32(scale)
    for item in prange(n_items):
        flash_item(item, q, k_raw, v_raw, fmt, first, pos, sc, window, n_split, m, l, o)
    for t in range(T):                  # cheap next to the above: one parallel region is enough
        merge_splits(m, l, o, t, out)


@njit(parallel=True)
def flash_kernel(q, k_raw, v_raw, fmt, first, pos, scale, window, n_split, out):
    """flash_items, the work items spread over the threads."""
    flash_items(q, k_raw, v_raw, fmt, first, pos, scale, window, n_split, out)


@njit
def flash_kernel_serial(q, k_raw, v_raw, fmt, first, pos, scale, window, n_split, out):
    """flash_items on the calling thread alone, item after item: the same items, splits and
    merge, so the same numbers, without waking the other threads for a few microseconds
    of work."""
    flash_items(q, k_raw, v_raw, fmt, first, pos, scale, window, n_split, out)


# Below this many multiply-adds of q.K (T x n_head x visible cells x Dk) attention runs on
# one thread, where an empty parallel region costs ~10 us with 2 threads (measured on a busy
# 2-core machine; less when the other core idles).  At 64K (SmolLM2: 9 heads x 64 over 113
# cells, ~20 us of work) two threads split into 2-tile pieces already win: at 130-200 cells
# 22-32 us against 30-42 us on one thread (2-core Zen 3, decode, F16 cache).
SERIAL_BELOW_MACS = 64 * 1024


def n_splits(T: int, n_head_kv: int, n_visible: int, n_threads: int) -> int:
    """Decode has only n_head_kv work items, fewer than the cores when n_head_kv is 1-3:
    split the KV range too (Flash-Decoding), but keep each split at least 2 tiles long
    (4 left SmolLM2's 3 KV heads unsplit up to 255 cells: one thread did two thirds)."""
    items = n_head_kv * -(-T // BLOCK_Q)
    want = 4 * n_threads
    if items >= want:
        return 1
    return max(1, min(-(-want // items), n_visible // (2 * TILE)))


def flash_attention(q: np.ndarray, kv: KVView, pos: int, scale: float, window: int = 0) -> np.ndarray:
    """numba flash attention: q [T, H, Dk] -> [T, H, Dv]."""
    T, n_head, dk = q.shape
    k, v = kv.k, kv.v
    n_visible = min(kv.n_kv - kv.first, window + T - 1 if window else kv.n_kv)
    out = np.empty((T, n_head, kv.head_dim_v), np.float32)
    q = np.ascontiguousarray(q, dtype=np.float32)
    n_threads = get_threads()
    # The splits are chosen for the threads there are, whichever kernel runs: they decide
    # the order of the sums, hence the last bits of the result.
    n_split = n_splits(T, k.shape[1], n_visible, n_threads)
    serial = n_threads == 1 or T * n_head * n_visible * dk < SERIAL_BELOW_MACS
    (flash_kernel_serial if serial else flash_kernel)(
        q, k, v, kv.fmt, kv.first, pos, float(scale), window, n_split, out)
    return out


def kernels() -> list:
    """The numba dispatchers warmup() compiles (for jit's warm-cache check)."""
    if not HAVE_NUMBA:
        return []
    return [flash_kernel, flash_kernel_serial, quantize_f16_rows, quantize_q8_0_rows, quantize_q4_0_rows]


def warmup() -> None:
    """Compile (or load from numba's disk cache) the flash kernels and the KV quantizers, so
    the first token does not wait ~10 s for them.  One compilation serves every KV type."""
    if not HAVE_NUMBA:
        return
    x = np.ones((2, 1, 32), np.float32)
    for kv_type in ("f16", "q8_0", "q4_0"):
        cache = KVCache(1, 1, 32, 32, 4, kv_type)
        cache.store(0, 0, x, x)
    q, view = np.ones((2, 2, 32), np.float32), cache.view(0, 2)
    out = np.empty_like(q)
    for kernel in (flash_kernel, flash_kernel_serial):     # flash_attention picks one a call
        kernel(q, view.k, view.v, view.fmt, view.first, 0, 0.1, 0, 1, out)
