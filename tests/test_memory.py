"""The memory plan (tinyllm/memory.py) and ledger (tinyllm/tools/memory.py): planned sizes from the real models' headers,
measured numbers from this very process."""

import json
import mmap
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinyllm.model import Config, swa_layer_indices
from tinyllm import memory
from tinyllm.tools.memory import ledger
from tinyllm.gguf_file import GGUFFile

MiB = 1 << 20
FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "llama_cpp_buffers.json").read_text())


@pytest.fixture(scope="module")
def smol(smollm2_path):
    return GGUFFile(smollm2_path)


@pytest.fixture(scope="module")
def gemma(gemma3_path):
    return GGUFFile(gemma3_path)


# ---- planned: weights ---------------------------------------------------------------------

def test_weights_by_type_and_group(smol):
    by_type = memory.weights_by_type(smol)
    total = sum(t.n_bytes for t in smol.tensors.values())
    assert set(by_type) == {"Q4_1", "Q8_0", "F32"} and sum(by_type.values()) == total
    assert by_type["Q8_0"] == smol.tensors["token_embd.weight"].n_bytes == 576 * 49152 // 32 * 34
    groups = memory.weights_by_group(smol)
    assert "output" not in groups                     # tied to token_embd
    assert sum(groups.values()) == total
    assert groups["norms"] == (30 * 2 + 1) * 576 * 4
    n_attn = 576 * 576 * 2 + 576 * 192 * 2           # q, o, k, v per layer (elements)
    assert groups["attention"] == 30 * n_attn // 32 * 20   # Q4_1: 20 bytes per 32


def test_shape_from_header(smol, gemma):
    s = memory.model_shape(smol)
    assert (s.n_layer, s.n_embd, s.n_head, s.n_head_kv, s.head_dim, s.n_vocab) == (30, 576, 9, 3, 64, 49152)
    assert s.swa_layers == ()
    g = memory.model_shape(gemma)
    assert (g.head_dim, g.head_dim_v, g.n_head_kv, g.sliding_window) == (256, 256, 1, 512)
    # the same local/global layers llama.cpp logs as is_swa: every 6th layer is global
    assert [i for i in range(18) if i not in g.swa_layers] == [5, 11, 17]


def test_swa_pattern_from_metadata():
    assert swa_layer_indices(8, 4) == (0, 1, 2, 4, 5, 6)
    assert swa_layer_indices(4, [True, False, True, False]) == (0, 2)
    assert swa_layer_indices(4, 0) == ()


# ---- planned: KV cache --------------------------------------------------------------------

def test_smollm2_kv_cache(smol):
    s = memory.model_shape(smol)
    assert memory.kv_cache_bytes(s, 2048, "f16") == 30 * 2048 * 3 * 64 * 2 * 2 == 45 * MiB
    assert memory.kv_cache_bytes(s, 2048, "f32") == 90 * MiB
    assert memory.kv_cache_bytes(s, 2048, "q8_0") == 45 * MiB * 34 // 64
    assert memory.kv_cache_bytes(s, 2048, "q4_0") == 45 * MiB * 18 // 64
    # the same bytes llama.cpp logged for this model (it holds all n_ctx cells up front)
    for run in FIXTURE["models"]["SmolLM2-135M-Instruct.Q4_1.gguf"]["runs"]:
        planned = memory.kv_cache_bytes(s, run["n_ctx_allocated"], run["kv_type"])
        assert planned / MiB == pytest.approx(run["buffers_mib"]["CPU KV"], abs=0.006)


def test_kv_cache_grows_in_chunks(smol):
    s = memory.model_shape(smol)
    per_cell = 30 * 3 * 128 * 2
    assert memory.kv_cache_bytes(s, 2048, "f16", n_tokens=0) == 0
    assert memory.kv_cache_bytes(s, 2048, "f16", n_tokens=1) == 256 * per_cell
    assert memory.kv_cache_bytes(s, 2048, "f16", n_tokens=257) == 512 * per_cell
    assert memory.kv_cache_bytes(s, 2048, "f16", n_tokens=2048) == 2048 * per_cell
    assert memory.kv_cache_bytes(s, 1000, "f16", n_tokens=999) == 1000 * per_cell  # capped at n_ctx


def test_gemma3_sliding_window_layers_keep_only_the_window(gemma):
    s = memory.model_shape(gemma)
    per_cell = 1 * (256 + 256) * 2
    # 3 global layers hold the context, 15 local ones a ring of the 512-cell window plus
    # one 256-token batch (new tokens attend to the window before them)
    assert memory.kv_cache_bytes(s, 8192, "f16") == (3 * 8192 + 15 * 768) * per_cell
    assert memory.kv_cache_bytes(s, 8192, "f16", n_tokens=300) == 18 * 512 * per_cell
    assert memory.kv_cache_bytes(s, 8192, "f16", n_tokens=5000) == (3 * 5120 + 15 * 768) * per_cell
    assert memory.kv_cells(s, 256)[0] == 256            # window larger than the context


def test_quantized_cache_needs_whole_blocks():
    odd = Config("x", 1, 40, 80, 1, 1, 40, 40, 10, 100)
    with pytest.raises(memory.TinyLLMError):
        memory.kv_cache_bytes(odd, 16, "q8_0")


# ---- planned: scratch ---------------------------------------------------------------------

def test_scratch_buffers(smol):
    s = memory.model_shape(smol)
    off = memory.scratch_bytes(s, n_batch=32, n_ctx=2048, flash_attn=False)
    on = memory.scratch_bytes(s, n_batch=32, n_ctx=2048, flash_attn=True)
    assert off["att"] == 9 * 32 * 2048 * 4              # H x T x n_kv float32
    assert on["att"] == 9 * 32 * (256 + 2) * 4
    assert memory.scratch_bytes(s, 32, 8192, True) == on   # FA: independent of the context
    assert memory.scratch_bytes(s, 32, 8192, False)["att"] == 4 * off["att"]
    assert on["logits"] == 49152 * 4
    assert memory.scratch_bytes(s, 32, 2048, True, all_logits=True)["logits"] == 32 * 49152 * 4
    assert on["x"] == on["xb2"] == 32 * 576 * 4 and on["hb"] == 32 * 1536 * 4
    assert on["k"] == on["v"] == 32 * 3 * 64 * 4 and on["q"] == 32 * 9 * 64 * 4
    # classic attention also holds the cache dequantized, contiguous queries and the mask
    assert on["att_kv"] == 0
    assert off["att_kv"] == 2048 * 3 * (64 + 64) * 4 + 32 * 9 * 64 * 4 + 2 * 32 * 2048
    # the FFN runs on slices of FFN_TOKENS tokens
    assert memory.scratch_bytes(s, 512, 2048, True)["hb"] == memory.FFN_TOKENS * 1536 * 4


# ---- measured -------------------------------------------------------------------------------

def test_measured_is_sane_in_this_process():
    m = memory.measured()
    assert m.rss > 10 * MiB and m.peak_rss >= m.rss
    assert m.rss_anon > 0 and m.rss_file > 0 and m.swap >= 0
    assert m.rss_anon + m.rss_file + m.rss_shmem == pytest.approx(m.rss, abs=1 * MiB)
    # 64 MiB of touched private anonymous memory, mapped here rather than taken from malloc,
    # which may hand out heap pages that are already resident (the CI run measured +8 KiB)
    block = mmap.mmap(-1, 64 * MiB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    pages = np.frombuffer(block, np.uint8)
    pages[::4096] = 1
    after = memory.measured()
    assert after.rss_anon - m.rss_anon > 60 * MiB
    del pages
    block.close()


def test_mapped_weights_show_up_as_file_backed(smollm2_path):
    g = GGUFFile(smollm2_path)
    before = memory.measured(model_path=smollm2_path).weights_resident
    # touch one byte per page of every tensor (the header pages were read when parsing)
    checksum = sum(int(g.raw(name).reshape(-1)[::4096].sum()) for name in g.tensors)
    after = memory.measured(model_path=smollm2_path)
    assert checksum >= 0 and before <= after.weights_resident
    assert after.weights_resident >= 0.95 * g.file_size
    assert after.rss_file >= after.weights_resident
    g.close()


def test_metadata_objects_match_what_parsing_the_header_costs(gemma3_path):
    """Opening Gemma 3 turns its 262k-token vocabulary into Python strings: the planned
    metadata_object_bytes is what RssAnon grows by (measured in a fresh process)."""
    code = (
        "import json, sys\n"
        "from tinyllm import memory\n"
        "from tinyllm.gguf_file import GGUFFile\n"
        "before = memory.measured().rss_anon\n"
        f"g = GGUFFile({gemma3_path!r})\n"
        "after = memory.measured().rss_anon\n"
        "print(json.dumps([after - before, memory.metadata_object_bytes(g)]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    grown, planned = json.loads(out.stdout)
    assert planned > 15 * MiB
    assert grown == pytest.approx(planned, rel=0.2)


# ---- the heap a forward pass allocates from (tinyllm/heap.py) --------------------------------

HEAP_SCRIPT = r"""
import json, resource, sys
from tinyllm import heap, memory
heap.configure()                                  # as the tinyllm command does, first thing
from tinyllm.startup import open_model
m, _ = open_model(sys.argv[1], n_ctx=1024, threads=2)
ids = [(7 * i) % 20000 + 100 for i in range(256)]
m.forward(ids[:8], 0)
m.reset()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
m.forward(ids, 0)
faulted = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) * 4096
plan = memory.MemoryPlan.from_gguf(m.gguf, 1024, "f16", 256, True)
print(json.dumps({"faulted": faulted, "scratch": plan.scratch_total, "n_layer": m.cfg.n_layer}))
"""


def test_a_prefill_reuses_its_scratch_pages_layer_to_layer(smollm2_path):
    """A 256-token prefill of SmolLM2 allocates the same buffers in each of its 30 layers.
    From the heap they are faulted in about once (measured: 16 MB, ~2x the planned scratch,
    KV cache included); as a fresh mapping per buffer, as before heap.py, every layer
    faulted them in again (365 MB, ~50x the scratch: 12-20 % of a 1.5B's prefill)."""
    out = subprocess.run([sys.executable, "-c", HEAP_SCRIPT, smollm2_path], capture_output=True,
                         text=True, check=True)
    got = json.loads(out.stdout)
    assert got["n_layer"] == 30 and got["scratch"] > 4 * MiB
    assert got["faulted"] < 5 * got["scratch"], got


TRIM_SCRIPT = r"""
import ctypes, json
import numpy as np
from tinyllm import heap, memory
MiB = 1 << 20
heap.configure()
largest = 4 * MiB * ctypes.sizeof(ctypes.c_long)
arrays = [np.ones(MiB // 4, np.float32) for _ in range(3 * largest // (2 * MiB))]
touched = memory.measured().rss_anon
del arrays
kept = memory.measured().rss_anon
heap.trim()
print(json.dumps([largest, touched, kept, memory.measured().rss_anon]))
"""


def test_trim_gives_freed_heap_back():
    """Under heap.configure() freed blocks stay in the heap (up to twice glibc's largest
    mmap threshold: reused by the next layer) until heap.trim() returns them: 1 MiB arrays
    worth 1.5 thresholds (48 MiB on 64-bit), touched and freed, leave RSS only at trim.
    (A fresh process: the malloc settings are the whole process's.)"""
    out = subprocess.run([sys.executable, "-c", TRIM_SCRIPT], capture_output=True, text=True, check=True)
    largest, touched, kept, trimmed = json.loads(out.stdout)
    assert touched - kept < largest // 4                 # freed, but kept for reuse
    assert kept - trimmed > largest                      # and given back


def test_forward_trims_after_a_prefill_not_after_a_decode_step(smollm2, monkeypatch):
    from tinyllm import heap
    model, _ = smollm2
    calls = []
    monkeypatch.setattr(heap, "trim", lambda: calls.append(1))
    model.reset()
    model.forward([100, 200, 300], 0)
    assert calls == [1]
    model.forward([400], 3)
    assert calls == [1]
    model.reset()


# ---- the ledger -----------------------------------------------------------------------------

def test_plan_totals(smol):
    plan = memory.MemoryPlan.from_gguf(smol, n_ctx=2048, kv_type="q8_0", n_batch=32,
                                       flash_attn=True, n_tokens=300,
                                       runtime_baseline_bytes=100 * MiB)
    assert plan.weights == sum(t.n_bytes for t in smol.tensors.values())
    assert plan.kv_full == 45 * MiB * 34 // 64
    assert plan.kv_allocated == plan.kv_full * 512 // 2048
    assert plan.anon == (plan.kv_allocated + plan.metadata_objects + plan.tokenizer_objects
                         + plan.kernels + 100 * MiB)
    assert plan.file_bytes == smol.file_size > plan.weights
    assert plan.rss == plan.file_bytes + plan.anon
    assert plan.peak == plan.rss + plan.scratch_total
    assert plan.at(2048).kv_allocated == plan.kv_full


def test_ledger_table(smol):
    led = ledger(smol, n_ctx=2048, kv_type="f16", n_batch=32, flash_attn=False,
                        n_tokens=100, runtime_baseline_bytes=memory.measure_runtime_baseline())
    text = led.table()
    assert "MiB (2^20 bytes)" in text and "1 GB = 10^9 bytes" in text
    assert "KV cache at full n_ctx 2048" in text and " 45.0 " in text
    assert "OLLAMA_FLASH_ATTENTION=0" in text
    for fig in led.ollama:
        assert f"{fig.band.label:24}{fig.printed:>9}" in text
    # CPU-only 0.12.7-0.24: weights (blk + norm + tied token_embd) + f16 KV, nothing else
    cpu = next(f for f in led.ollama if f.band.key == "cpu-0.24")
    assert cpu.size == led.plan.weights + 45 * MiB
    assert led.measured.rss > 0


@pytest.mark.parametrize("n_tokens", [1, 300, 1100])
def test_planned_kv_equals_the_real_cache(gemma3_path, n_tokens):
    """The ledger's KV figure is the bytes a fresh cache has allocated after n_tokens."""
    from tinyllm.model import Model
    model = Model(gemma3_path, n_ctx=2048)
    model.forward(list(range(1000, 1000 + min(n_tokens, 256))), 0)
    for start in range(256, n_tokens, 256):
        model.forward(list(range(1000, 1000 + min(256, n_tokens - start))), start)
    s = memory.model_shape(model.gguf)
    planned = memory.kv_cache_bytes(s, model.n_ctx, model.cache.kv_type, n_tokens=n_tokens)
    assert model.cache.nbytes_allocated == planned


@pytest.mark.parametrize("model,flash", [("smollm2", "on"), ("smollm2", "off"), ("gemma3", "on")])
def test_ledger_total_is_within_5_percent_of_measured_rss(smollm2_path, gemma3_path, model, flash):
    """A fresh `tinyllm bench` process: the ledger's planned resident total (between
    forward calls) and planned peak (during the 256-token prefill) against VmRSS and
    VmHWM measured in that process.  The first run fills numba's disk cache, so the
    second measures a normal start, not a compile."""
    from conftest import run_cli
    path = smollm2_path if model == "smollm2" else gemma3_path
    args = ("bench", path, "-p", 256, "-n", 4, "--ctx", 2048, "--n-batch", 256,
            "--flash-attn", flash, "--json")
    for _ in range(2):
        out = run_cli(*args)
        assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["planned_rss_mib"] == pytest.approx(res["rss_mib"], rel=0.05)
    assert res["planned_peak_mib"] == pytest.approx(res["peak_rss_mib"], rel=0.05)
