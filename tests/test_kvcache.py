"""KV cache storage: ggml block layouts, chunked growth, sliding-window rings, truncation."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize

from tinyllm.attention import attention_classic
from tinyllm.errors import TinyLLMError
from tinyllm.kvcache import (KVCache, dequantize_cells, dequantize_rows_np, quantize_rows,
                             quantize_rows_np)

GGML = {"q8_0": GGMLQuantizationType.Q8_0, "q4_0": GGMLQuantizationType.Q4_0}


def awkward_rows(rng, n_rows, n):
    """Random rows plus the cases rounding rules differ on: all-zero blocks, exact
    halves after scaling, a block whose largest magnitude is negative, huge and tiny values."""
    scale = rng.uniform(0.01, 30, (n_rows, 1)).astype(np.float32)
    x = rng.standard_normal((n_rows, n)).astype(np.float32) * scale
    x[0, :32] = 0.0
    x[1, :32] = np.arange(32, dtype=np.float32) - 16.0 + 0.5       # halves: q8_0 ties round away
    x[1, 0] = 127.0                                                  # so d = 1 exactly
    x[2, :32] = np.abs(x[2, :32])
    x[2, 7] = -2 * x[2, :32].max()                                   # q4_0: negative max -> d > 0
    x[3, :32] *= np.float32(1e-6)
    x[3, 32:] *= np.float32(1e3)
    return x


@pytest.mark.parametrize("kv_type", ["q8_0", "q4_0"])
def test_quantize_matches_gguf_reference(kv_type):
    rng = np.random.default_rng(1)
    x = awkward_rows(rng, 64, 256)
    ref = gguf_quantize(x, GGML[kv_type])
    assert np.array_equal(quantize_rows_np(x, kv_type), ref)
    assert np.array_equal(quantize_rows(x, kv_type), ref)           # numba when available


def test_f16_rows_match_numpy_cast():
    """quantize_rows' f16 (numba when available) rounds as numpy's astype(float16): ties to
    even, subnormals, overflow to inf, inf, nan; here on random bit patterns too, all but
    the signaling nans (which arithmetic never makes, and the hardware would quiet)."""
    rng = np.random.default_rng(3)
    bits = rng.integers(0, 2**32, 64 * 256, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32).copy()
    signaling = np.isnan(x) & (bits & 0x00400000 == 0)
    x[signaling] = np.nan
    x[:16] = [0.0, -0.0, 65504, 65519.99, 65520, -1e6, np.inf, -np.inf, np.nan,
              6e-8, 2.98e-8, 2.99e-8, -3e-5, 1 + 2**-11, 1 + 3 * 2**-11, 1e-40]
    x[16:4096] = rng.standard_normal(4080).astype(np.float32) * np.float32(300)
    x = x.reshape(64, 256)
    with np.errstate(over="ignore", invalid="ignore"):
        want = x.astype(np.float16).view(np.uint8)
    assert np.array_equal(quantize_rows_np(x, "f16"), want)
    assert np.array_equal(quantize_rows(x, "f16"), want)           # numba when available


@pytest.mark.parametrize("kv_type", ["q8_0", "q4_0"])
def test_store_load_round_trip_matches_gguf_dequantize(kv_type):
    rng = np.random.default_rng(2)
    n_head_kv, head_dim = 3, 64
    cache = KVCache(2, n_head_kv, head_dim, head_dim, 64, kv_type)
    k = awkward_rows(rng, 40 * n_head_kv, head_dim).reshape(40, n_head_kv, head_dim)
    v = rng.standard_normal((40, n_head_kv, head_dim)).astype(np.float32)
    cache.store(1, 0, k[:33], v[:33])
    cache.store(1, 33, k[33:], v[33:])
    view = cache.view(1, 40)
    want_k = gguf_dequantize(gguf_quantize(k, GGML[kv_type]), GGML[kv_type])
    want_v = gguf_dequantize(gguf_quantize(v, GGML[kv_type]), GGML[kv_type])
    assert np.array_equal(view.keys(), want_k)
    assert np.array_equal(view.values(), want_v)
    # the tile dequantizer the flash kernel uses: every head, a tile that starts mid-cache
    for g in range(n_head_kv):
        out = np.empty((20, head_dim), np.float32)
        dequantize_cells(view.k, g, 13, 20, view.fmt, out)
        assert np.array_equal(out, want_k[13:33, g])


@pytest.mark.parametrize("dim", [64, 36])       # 36: the tile reader's 8 at a time, then the rest
def test_f16_and_f32_round_trip_including_specials(dim):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 2, dim)).astype(np.float32)
    x[0, 0, :6] = [np.inf, -np.inf, np.nan, 3e-6, -7e-8, 70000.0]   # f16 subnormals, overflow
    x[1, 1, :3] = [0.0, -0.0, 65504.0]
    with np.errstate(over="ignore"):                                 # 70000 -> inf, as ggml
        as_f16 = x.astype(np.float16).astype(np.float32)
    for kv_type, want in (("f32", x), ("f16", as_f16)):
        cache = KVCache(1, 2, dim, dim, 16, kv_type)
        cache.store(0, 0, x, x)
        view = cache.view(0, 8)
        assert np.array_equal(view.keys(), want, equal_nan=True)
        for g in range(2):
            out = np.empty((8, dim), np.float32)
            dequantize_cells(view.v, g, 0, 8, view.fmt, out)
            assert np.array_equal(out.view(np.uint32), want[:, g].view(np.uint32))   # bit for bit


def test_quantized_cache_needs_whole_blocks():
    with pytest.raises(TinyLLMError, match="multiple of 32"):
        KVCache(1, 2, 48, 48, 16, "q8_0")
    with pytest.raises(TinyLLMError, match="not supported"):
        KVCache(1, 2, 64, 64, 16, "q5_1")


def test_growth_in_chunks_up_to_n_ctx():
    cache = KVCache(3, 2, 32, 32, n_ctx=600, kv_type="q8_0", chunk=256)
    x = np.ones((1, 2, 32), np.float32)
    assert cache.n_cells == 0 and cache.nbytes_allocated == 0
    cells = []
    for pos in range(600):
        for il in range(3):
            cache.store(il, pos, x, x)
        cells.append(cache.n_cells)
    assert cells[0] == 256 and cells[255] == 256 and cells[256] == 512 and cells[-1] == 600
    assert cache.n_used == 600
    assert cache.nbytes_allocated == 600 * 3 * 2 * 2 * 34     # layers * heads * (k + v) * one block
    with pytest.raises(TinyLLMError, match="context full"):
        cache.store(0, 600, x, x)


def test_ring_memory_stays_flat():
    """Window 64 + n_batch 32: the ring layer never holds more than 96 cells while the
    full layer grows with the conversation."""
    rng = np.random.default_rng(4)
    cache = KVCache(2, 1, 32, 32, n_ctx=4096, kv_type="f16", windows=[64, None], chunk=32, n_batch=32)
    pos, ring_cells, sizes = 0, [], []
    while pos < 1500:
        T = int(rng.integers(1, 33))
        x = rng.standard_normal((T, 1, 32)).astype(np.float32)
        for il in range(2):
            cache.store(il, pos, x, x)
        pos += T
        ring_cells.append(cache.cells_allocated[0])
        sizes.append(cache.nbytes_allocated)
    assert max(ring_cells) == 96
    assert cache.cells_allocated[1] >= pos
    ring_bytes = 96 * 2 * 64                                         # cells * (k + v) * 32 f16
    assert cache.nbytes_allocated == ring_bytes + cache.cells_allocated[1] * 2 * 64
    assert cache.nbytes_used == (96 + pos) * 2 * 64


def test_a_batch_larger_than_n_batch_widens_the_ring():
    cache = KVCache(1, 1, 32, 32, n_ctx=1000, kv_type="f32", windows=[16], chunk=8, n_batch=8)
    x = np.arange(150 * 32, dtype=np.float32).reshape(150, 1, 32)
    for pos in range(0, 50, 5):
        cache.store(0, pos, x[pos:pos + 5], x[pos:pos + 5])
    assert cache.cells_allocated == [16 + 8]
    cache.store(0, 50, x[50:], x[50:])         # 100 tokens at once: the window before each must stay
    assert cache.cells_allocated == [16 - 1 + 100]
    view = cache.view(0, 150)
    assert view.first == 35                    # the window of position 50 starts at 35
    assert np.array_equal(view.keys(), x[35:])


def fill(cache, xs, pos, batches):
    for T in batches:
        cache.store(0, pos, xs[pos:pos + T], -xs[pos:pos + T])
        pos += T
    return pos


def test_truncate_contract():
    rng = np.random.default_rng(5)
    xs = rng.standard_normal((400, 1, 32)).astype(np.float32)
    window = 24
    ring = KVCache(1, 1, 32, 32, n_ctx=400, kv_type="f32", windows=[window], chunk=8, n_batch=8)
    full = KVCache(1, 1, 32, 32, n_ctx=400, kv_type="f32")
    for cache in (ring, full):
        fill(cache, xs, 0, [8] * 25)                                # 200 positions; the ring holds 32
    assert ring.cells_allocated == [32] and ring.view(0, 200).first == 168

    # the window of position 195 (172..194) is still held: the ring can go back there
    assert ring.can_truncate(195) and ring.truncate(195) == 195
    # ... but not to 150: positions 127..149 were overwritten, so the cache is cleared
    assert not ring.can_truncate(150)
    assert ring.truncate(150) == 0 and ring.n_used == 0 and ring.nbytes_used == 0
    # a caller that ignores the return value cannot silently attend to missing cells
    with pytest.raises(TinyLLMError, match="cannot store"):
        ring.store(0, 150, xs[150:151], xs[150:151])
    # nor can it rewrite an old position in place
    fill(ring, xs, 0, [8] * 25)
    with pytest.raises(TinyLLMError, match="no longer holds"):
        ring.store(0, 150, xs[150:151], xs[150:151])
    ring.store(0, 195, xs[195:196], xs[195:196])                      # window 172..195 held: fine
    assert ring.n_used == 196
    # full layers can always go back
    assert full.can_truncate(3) and full.truncate(3) == 3 and full.n_used == 3


def test_attention_after_truncate_equals_fresh_cache():
    """Re-feeding a changed suffix after truncate() gives what a fresh cache gives."""
    rng = np.random.default_rng(6)
    xs = rng.standard_normal((300, 2, 32)).astype(np.float32)
    ys = rng.standard_normal((300, 2, 32)).astype(np.float32)        # the "edited" conversation
    q = rng.standard_normal((5, 4, 32)).astype(np.float32)
    window = 40
    cache = KVCache(1, 2, 32, 32, n_ctx=300, kv_type="q8_0", windows=[window], chunk=16, n_batch=16)
    fill(cache, xs, 0, [16] * 12 + [3, 1, 1, 1])                     # 198 positions
    keep = cache.truncate(185)          # the ring (56 cells) still holds 142..197 ⊇ 146..184
    assert keep == 185
    edited = np.concatenate([xs[:keep], ys[keep:]])
    fill(cache, edited, keep, [15])
    fresh = KVCache(1, 2, 32, 32, n_ctx=300, kv_type="q8_0", windows=[window], chunk=16, n_batch=16)
    fill(fresh, edited, 0, [16] * 12 + [8])
    pos = 195
    a = attention_classic(q, cache.view(0, 200), pos, 0.2, window)
    b = attention_classic(q, fresh.view(0, 200), pos, 0.2, window)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_row_layouts_and_numba_numpy_agreement():
    """Row sizes are ggml's; quantize_rows (numba when available) gives the numpy reference's bytes."""
    x = np.random.default_rng(7).standard_normal((4, 3, 64)).astype(np.float32)
    for kv_type in ("f32", "f16", "q8_0", "q4_0"):
        raw = quantize_rows(x, kv_type)
        assert raw.shape == (4, 3, {"f32": 256, "f16": 128, "q8_0": 68, "q4_0": 36}[kv_type])
        assert np.array_equal(raw, quantize_rows_np(x, kv_type))
        assert dequantize_rows_np(raw, kv_type).shape == x.shape
