"""Attention: flash (numba and numpy) against classic, rings against full caches, and the
real SmolLM2 with different KV cache types."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinyllm import jit
from tinyllm.attention import (attention, attention_classic, flash_attention, flash_attention_np,
                               flash_kernel, flash_kernel_serial)
from tinyllm.kvcache import KVCache


def rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def filled_cache(rng, n_kv, n_head_kv, head_dim, kv_type="f32", window=None, batches=(256,)):
    """A one-layer cache holding positions 0..n_kv-1, fed in batches of the given sizes (cycled)."""
    cache = KVCache(1, n_head_kv, head_dim, head_dim, n_ctx=4096, kv_type=kv_type,
                    windows=[window], n_batch=max(batches))
    k = rng.standard_normal((n_kv, n_head_kv, head_dim)).astype(np.float32)
    v = rng.standard_normal((n_kv, n_head_kv, head_dim)).astype(np.float32)
    pos, i = 0, 0
    while pos < n_kv:
        T = min(batches[i % len(batches)], n_kv - pos)
        cache.store(0, pos, k[pos:pos + T], v[pos:pos + T])
        pos, i = pos + T, i + 1
    return cache, k, v


CASES = [  # n_head, n_head_kv, head_dim: GQA ratios 1, 2, 3, 4; head sizes 64, 256, and 80 and
    # 36 (the flash kernel's P V goes 64 columns at a time, then one at a time; its scores go 8
    # dimensions at a time, and one at a time where the head size is not a multiple of 8)
    (4, 4, 64), (9, 3, 64), (8, 2, 256), (4, 1, 256), (4, 2, 80), (4, 2, 36)]


@pytest.mark.parametrize("n_head,n_head_kv,head_dim", CASES)
@pytest.mark.parametrize("T", [1, 37])
@pytest.mark.parametrize("window", [0, 50])
def test_flash_matches_classic_f32(n_head, n_head_kv, head_dim, T, window):
    rng = np.random.default_rng(n_head * 1000 + head_dim + T + window)
    n_kv = 300
    cache, _, _ = filled_cache(rng, n_kv, n_head_kv, head_dim)
    q = rng.standard_normal((T, n_head, head_dim)).astype(np.float32) * 2
    pos = n_kv - T
    view = cache.view(0, n_kv)
    scale = 1 / np.sqrt(head_dim)
    ref = attention_classic(q, view, pos, scale, window)
    assert rel_err(flash_attention_np(q, view, pos, scale, window), ref) <= 1e-5
    assert rel_err(attention(q, view, pos, scale, window, flash=True), ref) <= 1e-5


@pytest.mark.skipif(not jit.HAVE_NUMBA, reason="numba kernel vs numpy reference needs numba")
@pytest.mark.parametrize("kv_type", ["f32", "f16", "q8_0", "q4_0"])
def test_numba_kernel_matches_numpy_reference(kv_type):
    rng = np.random.default_rng(11)
    cache, _, _ = filled_cache(rng, 700, 3, 64, kv_type, batches=(100, 1, 33))
    view = cache.view(0, 700)
    for T, window in ((1, 0), (1, 200), (64, 0), (64, 200), (300, 0)):
        q = rng.standard_normal((T, 9, 64)).astype(np.float32)
        pos = 700 - T
        ref = flash_attention_np(q, view, pos, 0.125, window)
        assert rel_err(flash_attention(q, view, pos, 0.125, window), ref) <= 1e-5
        # the quantized cache is dequantized the same way by both paths
        assert rel_err(attention_classic(q, view, pos, 0.125, window), ref) <= 1e-5


@pytest.mark.skipif(not jit.HAVE_NUMBA, reason="KV splits are a numba-kernel detail")
@pytest.mark.parametrize("window", [0, 300])
def test_kv_splits_merge_to_the_same_result(window):
    """Decode splits the KV range across threads (Flash-Decoding); the merged result must
    not depend on the number of splits."""
    rng = np.random.default_rng(12)
    cache, _, _ = filled_cache(rng, 1000, 1, 64, "q8_0")
    view = cache.view(0, 1000)
    q = rng.standard_normal((1, 4, 64)).astype(np.float32)
    outs = []
    for n_split in (1, 2, 5, 9):
        out = np.empty((1, 4, 64), np.float32)
        flash_kernel(q, view.k, view.v, view.fmt, view.first, 999, 0.125, window, n_split, out)
        outs.append(out)
    ref = attention_classic(q, view, 999, 0.125, window)
    for out in outs:
        assert rel_err(out, ref) <= 1e-5


@pytest.mark.skipif(not jit.HAVE_NUMBA, reason="the serial kernel is a numba-kernel detail")
@pytest.mark.parametrize("kv_type", ["f16", "q8_0"])
@pytest.mark.parametrize("T,window", [(1, 0), (1, 300), (37, 0)])
def test_serial_kernel_gives_the_parallel_kernels_bits(kv_type, T, window):
    """flash_attention runs small work on one thread (flash_kernel_serial): for the same
    splits it must give exactly the parallel kernel's numbers, or a decode step's logits
    would depend on the context length at which attention stops being "small"."""
    rng = np.random.default_rng(13)
    cache, _, _ = filled_cache(rng, 1000, 3, 64, kv_type)
    view = cache.view(0, 1000)
    q = rng.standard_normal((T, 9, 64)).astype(np.float32)
    for n_split in (1, 2, 5):
        a, b = np.empty((T, 9, 64), np.float32), np.empty((T, 9, 64), np.float32)
        flash_kernel(q, view.k, view.v, view.fmt, view.first, 1000 - T, 0.125, window, n_split, a)
        flash_kernel_serial(q, view.k, view.v, view.fmt, view.first, 1000 - T, 0.125, window, n_split, b)
        assert np.array_equal(a, b)


# One process compiles the flash kernels, a second loads them from numba's disk cache:
# both must compute the same bits (run by test_a_cold_and_a_warm_start_attend_alike).
COLD_WARM_SCRIPT = r"""
import json, sys
import numpy as np
sys.path.insert(0, "tests")
from test_attention import filled_cache
from tinyllm.attention import flash_kernel, flash_kernel_serial
out = {}
for kv_type in ("f16", "q8_0"):
    rng = np.random.default_rng(5)
    cache, _, _ = filled_cache(rng, 700, 3, 64, kv_type)
    view = cache.view(0, 700)
    for T, window, n_split in ((140, 0, 1), (1, 0, 3), (1, 300, 2)):
        q = (rng.standard_normal((T, 9, 64)) * 2).astype(np.float32)
        for name, kernel in (("parallel", flash_kernel), ("serial", flash_kernel_serial)):
            y = np.empty((T, 9, 64), np.float32)
            kernel(q, view.k, view.v, view.fmt, view.first, 700 - T, 0.125, window, n_split, y)
            out[f"{kv_type} T={T} window={window} {name}"] = y.tobytes().hex()
print(json.dumps(out))
"""


@pytest.mark.skipif(not jit.HAVE_NUMBA, reason="numba's disk cache")
def test_a_cold_and_a_warm_start_attend_alike(tmp_path):
    """The first run after an install compiles the kernels; later runs load them from the
    disk cache.  Both must give the same numbers, or a chat's first answer would differ from
    the same chat's answer the next day.  (They did not while online_softmax_step was a
    separate numba function: with reassociation allowed, its copy compiled on its own and
    its copy inside the cached kernel summed in different orders; SmolLM2's logits moved by
    up to 1.0 between a cold and a warm start with 8-bit activations.)"""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    root = Path(__file__).resolve().parent.parent
    runs = []
    for start in ("cold", "warm"):
        res = subprocess.run([sys.executable, "-c", COLD_WARM_SCRIPT], env=env, cwd=root,
                             capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stderr
        runs.append(json.loads(res.stdout))
    assert any((tmp_path / "numba").rglob("*.nbi")), "nothing was cached: the second run was cold too"
    cold, warm = runs
    assert cold.keys() == warm.keys()
    assert [k for k in cold if cold[k] != warm[k]] == []


@pytest.mark.parametrize("kv_type", ["f32", "q4_0"])
@pytest.mark.parametrize("flash", [True, False])
def test_ring_equals_full_cache_with_window_mask(kv_type, flash):
    """A ring buffer of window + n_batch cells, wrapped many times, attends exactly like a
    full cache masked to the same window."""
    rng = np.random.default_rng(13)
    window, n_batch, n_head_kv, head_dim = 48, 16, 2, 32
    ring = KVCache(1, n_head_kv, head_dim, head_dim, 1000, kv_type, windows=[window], chunk=16,
                   n_batch=n_batch)
    full = KVCache(1, n_head_kv, head_dim, head_dim, 1000, kv_type, chunk=16)
    pos, checked = 0, 0
    while pos < 400:                                    # 400 positions through a 64-cell ring: 6 wraps
        T = int(rng.choice([1, 1, 3, 16]))
        k = rng.standard_normal((T, n_head_kv, head_dim)).astype(np.float32)
        v = rng.standard_normal((T, n_head_kv, head_dim)).astype(np.float32)
        q = rng.standard_normal((T, 6, head_dim)).astype(np.float32)
        ring.store(0, pos, k, v)
        full.store(0, pos, k, v)
        a = attention(q, ring.view(0, pos + T), pos, 0.17, window, flash)
        b = attention(q, full.view(0, pos + T), pos, 0.17, window, flash)
        assert rel_err(a, b) <= 1e-6, f"pos {pos}, T {T}"
        pos, checked = pos + T, checked + 1
    assert ring.cells_allocated == [window + n_batch]
    assert ring.view(0, pos).first > 5 * (window + n_batch)     # it really wrapped
    assert checked > 50


# ---- the real model ---------------------------------------------------------------------------
def kl(p_logits, q_logits):
    """KL(p || q) of the softmaxes, float64."""
    p = np.asarray(p_logits, np.float64)
    q = np.asarray(q_logits, np.float64)
    lp = p - p.max(-1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
    lq = q - q.max(-1, keepdims=True)
    lq -= np.log(np.exp(lq).sum(-1, keepdims=True))
    return float((np.exp(lp) * (lp - lq)).sum(-1).max())


def dequantized_to_f32(model):
    """Swap every quantized weight matrix of a loaded model for its F32 dequantization.
    Only needed with numerics "llama" (TINYLLM_ACTIVATIONS=llama): linear() then rounds activations to 8 bits
    first, and a 1e-7 change anywhere flips some of those roundings (KL ~1e-3 between runs
    that differ only in float summation order).  F32 weights take activations as they are."""
    from tinyllm.quant import QTensor

    def f32(w):
        if not isinstance(w, QTensor) or w.type_name == "F32":
            return w
        return QTensor(np.ascontiguousarray(w.dequantize(), np.float32).view(np.uint8), 0, w.n_cols)

    w = model.weights
    w.token_embd, w.output = f32(w.token_embd), f32(w.output)
    for layer in w.layers:
        for name, value in vars(layer).items():
            setattr(layer, name, f32(value))
    return model


def run_model(path, ids, kv_type, flash, n_decode=4, n_ctx=1024, f32_weights=False, cache=None):
    """Prefill ids in batches of 256, then decode n_decode greedy tokens; logits of every step.
    Decode steps keep activations as they are (numerics="exact"): the tests compare attention
    variants, and 8-bit rounding would amplify their ulp differences (see above)."""
    from tinyllm.model import Model
    from tinyllm.startup import default_numerics
    m = Model(path, n_ctx=n_ctx, kv_type=kv_type, flash_attn=flash, numerics=default_numerics())
    if f32_weights:
        dequantized_to_f32(m)
    if cache is not None:
        m.cache = cache(m.cfg)
    logits, pos = [], 0
    for s in range(0, len(ids), 256):
        out = m.forward(ids[s:s + 256], s)
        pos = s + len(ids[s:s + 256])
    logits.append(out)
    for i in range(n_decode):
        out = m.forward([int(np.argmax(out))], pos, numerics="exact")
        pos += 1
        logits.append(out)
    return np.array(logits), m


ALICE = Path(__file__).resolve().parent / "fixtures" / "text" / "alice_ch1-3.txt"


def encode_alice(path, n_chars, n_tokens):
    from tinyllm.gguf_file import GGUFFile
    from tinyllm.tokenizer import Tokenizer
    ids = Tokenizer.from_gguf(GGUFFile(path)).encode(ALICE.read_text()[:n_chars], add_bos=False)
    assert len(ids) >= n_tokens
    return ids[:n_tokens]


def exact_activations():
    from tinyllm.startup import default_numerics
    return default_numerics() != "llama"


def test_smollm2_flash_vs_classic(smollm2_path):
    """SmolLM2, 400 prompt tokens in two batches, then 4 decoded tokens: flash and classic
    attention give the same logits."""
    ids = encode_alice(smollm2_path, 3000, 400)
    f32 = not exact_activations()
    flash, _ = run_model(smollm2_path, ids, "f16", True, f32_weights=f32)
    classic, _ = run_model(smollm2_path, ids, "f16", False, f32_weights=f32)
    d = kl(classic, flash)
    print(f"\nSmolLM2{' (F32 weights)' if f32 else ''}, KV f16: KL(classic || flash) = {d:.2e}")
    assert d < 1e-6
    assert np.array_equal(classic.argmax(-1), flash.argmax(-1))


def test_smollm2_q8_0_kv_vs_f16_kv(smollm2_path):
    ids = encode_alice(smollm2_path, 3000, 400)
    f32 = not exact_activations()
    f16, m16 = run_model(smollm2_path, ids, "f16", True, f32_weights=f32)
    q8, m8 = run_model(smollm2_path, ids, "q8_0", True, f32_weights=f32)
    q4, _ = run_model(smollm2_path, ids, "q4_0", True, f32_weights=f32)
    d8, d4 = kl(f16, q8), kl(f16, q4)
    print(f"\nSmolLM2{' (F32 weights)' if f32 else ''}, 400 + 4 tokens: KL(f16 KV || q8_0 KV) = {d8:.2e}, "
          f"KL(f16 KV || q4_0 KV) = {d4:.2e}; KV used f16 {m16.cache.nbytes_used / 2**20:.2f} MiB, "
          f"q8_0 {m8.cache.nbytes_used / 2**20:.2f} MiB")
    assert d8 < 1e-2
    # the same top token wherever f16's choice is clear (a 0.1-logit margin is a coin toss)
    top2 = np.sort(f16, axis=-1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.5
    assert clear.sum() >= 3
    assert np.array_equal(f16.argmax(-1)[clear], q8.argmax(-1)[clear])
    assert d8 < d4                 # 8 bits lose less than 4
    assert m8.cache.nbytes_used == m16.cache.nbytes_used * 34 // 64


def test_gemma3_ring_layers_match_full_cache(gemma3_path):
    """Gemma 3's 512-token window layers as rings (512 + 256 cells) vs the same layers
    keeping every position: 1000 tokens wrap the rings; the logits must agree."""
    ids = encode_alice(gemma3_path, 6000, 1000)
    ring, m = run_model(gemma3_path, ids, "f16", True, n_decode=2)
    ring_cells = m.cache.cells_allocated
    assert max(ring_cells) == 1024 and min(ring_cells) == 512 + 256

    full, mf = run_model(gemma3_path, ids, "f16", True, n_decode=2, cache=lambda cfg: KVCache(
        cfg.n_layer, cfg.n_head_kv, cfg.head_dim, cfg.head_dim_v, 1024, "f16"))
    d = kl(full, ring)
    print(f"\nGemma 3, 1000 tokens + 2 decoded: KL(full || ring) = {d:.2e}; KV allocated ring "
          f"{m.cache.nbytes_allocated / 2**20:.1f} MiB vs full {mf.cache.nbytes_allocated / 2**20:.1f} MiB")
    assert d < 1e-6
    assert m.cache.nbytes_allocated < mf.cache.nbytes_allocated
