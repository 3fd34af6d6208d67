"""Ollama's memory arithmetic (tinyllm/tools/ollama.py) against the worked example of
docs/ollama-memory.md §6 (Qwen2.5-7B Q4_K_M at num_ctx 32768, from a synthetic
sparse GGUF whose header is real) and against llama.cpp's logged buffers for the
real test models (tests/fixtures/llama_cpp_buffers.json, recorded by
scripts/record_llama_cpp_buffers.py)."""

import dataclasses
import importlib.util
import json
import os
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType as T

from tinyllm import memory
from tinyllm.tools import ollama
from tinyllm.gguf_file import GGUFFile

ROOT = Path(__file__).resolve().parent.parent
GiB, MiB, GB = 1 << 30, 1 << 20, 10**9


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


synthetic = _script("make_synthetic_header")


@pytest.fixture(scope="module")
def qwen7b_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic") / "qwen2.5-7b-q4_k_m.gguf"
    synthetic.write_qwen25_7b_q4_k_m(path)
    return str(path)


@pytest.fixture(scope="module")
def qwen7b(qwen7b_path):
    return GGUFFile(qwen7b_path)


@pytest.fixture(scope="module")
def q7(qwen7b):
    return ollama.OllamaModel.from_gguf(qwen7b)


# ---- the synthetic header --------------------------------------------------------------

def test_synthetic_file_is_sparse_and_readable(qwen7b_path, qwen7b):
    st = os.stat(qwen7b_path)
    assert st.st_size > 4.6e9                       # the apparent size of the real model
    assert st.st_blocks * 512 < 16 * MiB            # but only the header is on disk
    assert len(qwen7b.tensors) == 1 + 28 * 12 + 2
    q6 = [n for n, t in qwen7b.tensors.items() if t.ggml_type == T.Q6_K]
    assert sum(".attn_v." in n for n in q6) == 14 and sum(".ffn_down." in n for n in q6) == 14
    assert "output.weight" in q6
    last = max(qwen7b.tensors.values(), key=lambda t: t.offset)
    assert qwen7b.data_start + last.offset + last.n_bytes == st.st_size


def test_q4_k_m_rule_matches_a_real_q4_k_m_file(gemma3_path):
    """The use_more_bits rule the synthetic header uses picks exactly the layers that
    got more bits in the real Gemma-3-270M Q4_K_M (Q8_0/Q6_K instead of Q5_0/Q4_K)."""
    g = GGUFFile(gemma3_path)
    n = g.metadata["gemma3.block_count"]
    for i in range(n):
        more = synthetic.use_more_bits(i, n)
        assert g.tensors[f"blk.{i}.attn_v.weight"].ggml_type == (T.Q8_0 if more else T.Q5_0)
        assert g.tensors[f"blk.{i}.ffn_down.weight"].ggml_type == (T.Q6_K if more else T.Q4_K)


# ---- §6: weights, KV, graph ---------------------------------------------------------------

def test_weights_as_ollama_counts_them(q7, qwen7b):
    assert q7.key_length == 128 and q7.vocab_size == 152064 and not q7.tied_output
    assert sum(q7.layer_bytes) / GiB == pytest.approx(3.654, abs=5e-4)
    assert q7.layer_bytes[0] / MiB == pytest.approx(142.2, abs=0.05)
    assert qwen7b.tensors["output.weight"].n_bytes / MiB == pytest.approx(426.4, abs=0.05)
    assert q7.token_embd_bytes / MiB == pytest.approx(292.4, abs=0.05)
    assert q7.tensor_bytes / GB == pytest.approx(4.677, abs=5e-4)
    # no token_embd: "we historically haven't included InputWeights"
    assert q7.weights_bytes / GB == pytest.approx(4.37, abs=5e-3)
    assert q7.weights_bytes == q7.tensor_bytes - q7.token_embd_bytes


@pytest.mark.parametrize("np_, f16_gib, q8_gib, q8_real_mib, q4_gib, q4_real_mib", [
    (1, 1.750, 0.875, 952, 0.4375, 504),
    (4, 7.000, 3.500, 3808, 1.75, 2016),
])
def test_kv_table(q7, qwen7b, np_, f16_gib, q8_gib, q8_real_mib, q4_gib, q4_real_mib):
    est = lambda kv: sum(ollama.kv_estimate(q7, 32768, np_, kv))
    assert est("f16") == f16_gib * GiB
    assert est("q8_0") == q8_gib * GiB
    assert est("q4_0") == q4_gib * GiB
    # what ggml really allocates: llama-server's buffers and tinyllm's own cache agree
    for kv, mib in (("q8_0", q8_real_mib), ("q4_0", q4_real_mib), ("f16", f16_gib * 1024)):
        assert ollama.llama_server_buffers(q7, 32768, np_, kv)["kv"] == mib * MiB
        shape = memory.model_shape(qwen7b)
        assert np_ * memory.kv_cache_bytes(shape, 32768, kv) == mib * MiB


def test_graph_estimate(q7):
    partial, full = ollama.graph_estimate(q7, 32768, 1)
    assert full == 1_960_839_168 == 4 * 512 * (1 + 7168 + 32768 * 29)
    assert partial / GiB == pytest.approx(2.26, abs=5e-3)
    assert ollama.graph_estimate(q7, 32768, 4)[1] / GiB == pytest.approx(7.264, abs=5e-4)


# §6 "Resulting ollama ps SIZE": (np, kv, flash_attn) -> GB per band, to the doc's 2 decimals.
SIZE_TABLE = {
    (1, "f16"): {"metal-0.12.10": 8.96, "cuda-0.12.10": 8.91, "gpu-0.24": 8.21,
                 "cpu-0.12.6": 8.43, "cpu-0.24": 6.25},
    (1, "q8_0"): {"metal-0.12.10": 7.99, "cuda-0.12.10": 7.93, "gpu-0.24": 7.27,
                  "cpu-0.12.6": 7.45, "cpu-0.24": 5.31},
    (4, "f16"): {"metal-0.12.10": 20.64, "cuda-0.12.10": 20.58, "gpu-0.24": 19.69,
                 "cpu-0.12.6": 20.10, "cpu-0.24": 11.89},
    (4, "q8_0"): {"metal-0.12.10": 16.75, "cuda-0.12.10": 16.69, "gpu-0.24": 15.93,
                  "cpu-0.12.6": 16.21, "cpu-0.24": 8.13},
}


@pytest.mark.parametrize("np_, kv", list(SIZE_TABLE))
def test_ollama_ps_size_table(q7, np_, kv):
    for band, gb in SIZE_TABLE[(np_, kv)].items():
        fig = ollama.ollama_ps(q7, band, 32768, np_, kv, flash_attn="on")
        assert fig.kv_type_used == kv
        assert fig.size / GB == pytest.approx(gb, abs=0.005), band
        if kv == "f16":   # the estimate has no flash-attention term
            assert ollama.ollama_ps(q7, band, 32768, np_, kv, "off").size == fig.size


def test_printed_sizes(q7):
    ps = lambda band, np_=1, kv="f16": ollama.ollama_ps(q7, band, 32768, np_, kv, "on").printed
    assert ps("metal-0.12.10") == "9.0 GB"
    assert ps("cpu-0.24") == "6.2 GB"
    assert ps("metal-0.12.10", 4) == "20 GB"
    assert ps("metal-0.12.10", 4, "q8_0") == "16 GB"


def test_quantized_kv_silently_falls_back_without_explicit_flash_attention(q7):
    for band in ("cpu-0.24", "gpu-0.24", "metal-0.12.10"):
        f16 = ollama.ollama_ps(q7, band, 32768, 1, "f16", "auto")
        for fa in ("auto", "off"):
            q8 = ollama.ollama_ps(q7, band, 32768, 1, "q8_0", fa)
            assert q8.kv_type_used == "f16" and q8.size == f16.size and q8.notes
    # llama-server (>= 0.30) resolves --flash-attn auto to on, so q8_0 applies
    auto = ollama.ollama_ps(q7, "cpu-0.30", 32768, 1, "q8_0", "auto")
    assert auto.kv_type_used == "q8_0" and auto.parts["kv"] == 952 * MiB
    assert ollama.ollama_ps(q7, "cpu-0.30", 32768, 1, "q8_0", "off").kv_type_used == "f16"


def test_llama_server_compute_buffer_for_qwen7b(q7):
    """§6/§7: FA on, the compute buffer is the logits plus one activation row, 304 MiB
    (the "CUDA0 compute buffer size = 304" of a Qwen2.5-7B log at n_ctx 2048); FA off at
    32768 the K*Q scores dominate (~1.87 GiB).  KV f16 at 2048 = 112.00 MiB."""
    on = ollama.llama_server_buffers(q7, 2048, 1, "f16", flash_attn=True)
    assert on["compute"] == 304 * MiB and on["kv"] == 112 * MiB
    off = ollama.llama_server_buffers(q7, 32768, 1, "f16", flash_attn=False)
    # the doc's 1.87 GiB is a hand derivation ("K*Q 1792 MiB + mask + small")
    assert off["compute"] / GiB == pytest.approx(1.87, rel=0.02)
    assert off["compute"] > 32768 * 512 * 28 * 4 + 32768 * 512 * 4     # scores + mask
    gpu = ollama.llama_server_buffers(q7, 32768, 1, "f16", flash_attn=True, gpu=True)
    assert gpu["model"] == q7.tensor_bytes_padded - q7.token_embd_bytes and gpu["output"] == 0


def test_generic_fallback_graph(q7):
    """Architectures without their own formula (qwen3 on the llama runner):
    partial = full = (H / min Hkv) * KV_total / 6."""
    q3 = dataclasses.replace(q7, arch="qwen3")
    kv = sum(ollama.kv_estimate(q3, 8192, 1, "f16"))
    assert ollama.graph_estimate(q3, 8192, 1) == (7 * kv // 6, 7 * kv // 6)
    assert any("Ollama engine" in n for n in ollama.ollama_ps(q3, "cpu-0.24", 8192).notes)


# ---- the real models vs llama.cpp ------------------------------------------------------------

FIXTURE = json.loads((ROOT / "tests" / "fixtures" / "llama_cpp_buffers.json").read_text())


@pytest.mark.parametrize("name", list(FIXTURE["models"]))
def test_llama_server_buffers_match_llama_cpp(name, smollm2_path, gemma3_path):
    path = {os.path.basename(p): p for p in (smollm2_path, gemma3_path)}[name]
    model = ollama.OllamaModel.from_gguf(GGUFFile(path))
    for run in FIXTURE["models"][name]["runs"]:
        got = ollama.llama_server_buffers(model, run["n_ctx"], 1, run["kv_type"], run["flash_attn"])
        logged = run["buffers_mib"]
        label = f"{name} {run}"
        # llama.cpp prints MiB with 2 decimals
        assert got["model"] / MiB == pytest.approx(logged["CPU_Mapped model"], abs=0.006), label
        assert got["kv"] / MiB == pytest.approx(logged["CPU KV"], abs=0.006), label
        assert got["output"] / MiB == pytest.approx(logged["CPU output"], abs=0.006), label
        # the compute buffer is the allocator's peak: modelled within 6 %
        assert got["compute"] / MiB == pytest.approx(logged["CPU compute"], rel=0.06), label


def test_ollama_llama_graph_formula_is_llama_cpp_non_fa_compute_buffer(smollm2_path):
    """§7: Ollama's `llama` fullOffload formula is the size of llama.cpp's compute buffer
    without flash attention (here within 2 % at 8192 cells, where the K*Q scores dominate)."""
    model = ollama.OllamaModel.from_gguf(GGUFFile(smollm2_path))
    run = next(r for r in FIXTURE["models"]["SmolLM2-135M-Instruct.Q4_1.gguf"]["runs"]
               if r["n_ctx"] == 8192 and not r["flash_attn"])
    _, full = ollama.graph_estimate(model, 8192, 1)
    assert full / MiB == pytest.approx(run["buffers_mib"]["CPU compute"], rel=0.02)


def test_gemma3_estimate_uses_the_window_on_local_layers(gemma3_path):
    g = GGUFFile(gemma3_path)
    m = ollama.OllamaModel.from_gguf(g)
    assert m.tied_output and m.output_bytes == (g.tensors["token_embd.weight"].n_bytes
                                                + g.tensors["output_norm.weight"].n_bytes)
    kv = ollama.kv_estimate(m, 8192, 2, "f16")
    per_cell = 1 * (256 + 256) * 2
    for il, b in enumerate(kv):
        cells = 2 * 8192 if il in (5, 11, 17) else 2 * 512 + 512
        assert b == cells * per_cell
    fig = ollama.ollama_ps(m, "metal-0.12.10", 8192, 2)
    assert fig.parts["spare layer"] == m.layer_bytes[0] + kv[0]
    assert any("Ollama engine" in n for n in fig.notes)


# ---- formatting, defaults, bands -----------------------------------------------------------

@pytest.mark.parametrize("n, text", [
    (8_963_538_944, "9.0 GB"), (20_640_481_280, "20 GB"), (6_249_607_168, "6.2 GB"),
    (5 * GB, "5 GB"), (9_960_000_000, "10.0 GB"), (150_000_000, "150 MB"), (1_500_000, "1.5 MB"),
    (999, "999 B"), (1_000, "1 KB"), (2_500_000_000_000, "2.5 TB"),
])
def test_format_ollama_ps(n, text):
    assert ollama.format_ollama_ps(n) == text


def test_defaults_by_version():
    d = ollama.ollama_defaults
    assert (d("0.5.7").num_ctx, d("0.5.7").num_parallel) == (2048, 4)
    assert d("0.6.6").num_parallel == 4 and d("0.6.7").num_parallel == 2
    assert d("0.6.7").num_ctx == 4096
    assert d("0.10.0").num_parallel == 1 and d("0.13.3").flash_attn == "off"
    assert d("0.13.4").flash_attn == "auto"
    assert ollama.default_num_ctx("0.15.5", vram_bytes=0) == 4096
    assert ollama.default_num_ctx("0.15.5", vram_bytes=24 * GiB) == 32768
    assert ollama.default_num_ctx("0.15.4", vram_bytes=80 * GiB) == 4096
    assert ollama.default_num_ctx("0.20.0", vram_bytes=80 * GiB) == 262144
    with pytest.raises(ValueError):
        d("0.27.0")
    assert ollama.describe_defaults("0.6.x").startswith(
        "Ollama 0.6.x would have used num_ctx 2048, num_parallel 4")


def test_band_for_version():
    assert ollama.band_for("0.12.6", "cpu").key == "cpu-0.12.6"
    assert ollama.band_for("0.12.7", "cpu").key == "cpu-0.24"
    assert ollama.band_for("0.6.5", "metal").key == "metal-0.9.2"
    assert ollama.band_for("0.9.3", "metal").key == "metal-0.12.10"
    assert ollama.band_for("0.5.4", "cpu").key == "cpu-0.9.2"
    assert ollama.band_for("0.9.3", "cpu").key == "cpu-0.11.4"
    assert ollama.band_for("0.11.4", "cpu").key == "cpu-0.11.4"
    assert ollama.band_for("0.11.5", "cpu").key == "cpu-0.12.6"
    assert ollama.band_for("0.12.10", "cuda").key == "cuda-0.12.10"
    assert ollama.band_for("0.12.11", "cuda").key == "gpu-0.24"
    assert ollama.band_for("v0.30.0", "metal").key == "gpu-0.30"
    assert ollama.parse_version("0.6.x") == (0, 6, 0)


# ---- checked against a real Ollama 0.5.4 (CPU-only) -----------------------------------------

def test_ollama_before_0_9_3_does_not_clamp_num_ctx(smollm2_path):
    """A real Ollama 0.5.4 on this machine's CPU showed 1.6 GB for SmolLM2 Q4_1 at num_ctx
    32768, four times the model's 8192-token training context: it sized all 32768 cells.
    The clamp to context_length came with 0.9.3."""
    m = ollama.OllamaModel.from_gguf(GGUFFile(smollm2_path))
    assert m.context_length == 8192
    old = ollama.ollama_ps(m, ollama.band_for("0.5.4", "cpu"), 32768)
    assert old.printed == "1.6 GB"
    assert old.parts["kv"] == 32768 * 30 * 3 * (64 + 64) * 2
    assert any("sizes it as asked" in n for n in old.notes)
    # from 0.9.3 the same request is sized at 8192 cells: what the study said for every version
    new = ollama.ollama_ps(m, ollama.band_for("0.9.3", "cpu"), 32768)
    assert new.parts["kv"] == 8192 * 30 * 3 * (64 + 64) * 2
    assert new.size == ollama.ollama_ps(m, "cpu-0.11.4", 8192).size == old.size - 1088421888
    assert new.printed == "466 MB"
    # within the training context the two agree
    assert ollama.ollama_ps(m, "cpu-0.9.2", 8192).size == new.size


def test_cpu_ollama_before_0_11_5_has_no_flash_attention(smollm2_path):
    """CPU flash attention arrived in 0.11.5 (commit 8f4ec9ab2): before, OLLAMA_FLASH_ATTENTION=1
    and OLLAMA_KV_CACHE_TYPE=q8_0 are ignored on the CPU and the cache stays f16.  GPUs had
    flash attention all along."""
    m = ollama.OllamaModel.from_gguf(GGUFFile(smollm2_path))
    f16 = ollama.ollama_ps(m, "cpu-0.9.2", 8192, 1, "f16", "on")
    for band in ("cpu-0.9.2", "cpu-0.11.4"):
        q8 = ollama.ollama_ps(m, band, 8192, 1, "q8_0", "on")
        assert q8.kv_type_used == "f16"
        assert any("no flash attention on the CPU" in n for n in q8.notes)
    assert ollama.ollama_ps(m, "cpu-0.9.2", 8192, 1, "q8_0", "on").size == f16.size
    q8 = ollama.ollama_ps(m, "cpu-0.12.6", 8192, 1, "q8_0", "on")
    assert q8.kv_type_used == "q8_0" and q8.parts["kv"] == 8192 * 30 * 3 * 128 * 1
    assert ollama.ollama_ps(m, "metal-0.9.2", 8192, 1, "q8_0", "on").kv_type_used == "q8_0"
    assert ollama.effective_kv_type(m, "q8_0", "on", "0.11.4", "cpu") == "f16"
    assert ollama.effective_kv_type(m, "q8_0", "on", "0.11.5", "cpu") == "q8_0"


def test_bands_cover_each_device_once():
    """Every studied version falls in exactly one band per device."""
    for v in ("0.2.0", "0.5.4", "0.9.2", "0.9.3", "0.11.4", "0.11.5", "0.12.6", "0.12.7",
              "0.12.10", "0.12.11", "0.24.0", "0.30.0", "0.33.0"):
        for dev in ("cpu", "cuda", "metal"):
            hits = [b for b in ollama.BANDS if (b.device == dev or (b.device == "gpu" and dev != "cpu"))
                    and b.first <= ollama.parse_version(v) <= b.last]
            assert len(hits) == 1, (v, dev, hits)
            assert ollama.band_for(v, dev) == hits[0]


def test_mem_json_for_one_ollama_version(smollm2_path):
    from conftest import run_cli
    r = run_cli("mem", smollm2_path, "--ctx", "32768", "--ollama-version", "0.5.4", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["units"] == "bytes" and d["plan"]["n_ctx"] == 32768
    assert d["plan"]["kv_full"] == 32768 * 30 * 3 * 128 * 2
    assert d["ollama"]["settings"]["version"] == "0.5.4"
    (band,) = d["ollama"]["bands"]
    assert band["band"] == "cpu-0.9.2" and band["printed"] == "1.6 GB"
    assert band["size"] == sum(band["parts"].values())
    r = run_cli("mem", smollm2_path, "--ollama-version", "0.27.0")
    assert r.returncode == 2 and "not covered" in r.stderr and "Traceback" not in r.stderr
    # every band without --ollama-version
    r = run_cli("mem", smollm2_path, "--json")
    assert [b["band"] for b in json.loads(r.stdout)["ollama"]["bands"]] == [b.key for b in ollama.BANDS]
