"""llama.cpp's quantization error per tensor and type, for tests/test_quantize.py.

    /work/refenv/venv/bin/python scripts/make_quantize_fixtures.py [--real]

Writes a deterministic synthetic llama model (scripts/synthetic_gguf.py, widths that
are multiples of 256 so every k-quant applies without fallback, F32 weights), then
overwrites two of its tensors with harder data (EDGE_TENSOR: rows of zeros, constants,
tiny and subnormal values, outliers, one-signed rows, sparse sub-blocks; HEAVY_TENSOR:
heavy-tailed weights, like real ones).  llama.cpp quantizes the file with
llama_model_quantize (params.pure: every matrix to the one type, no importance matrix)
into each type of tinyllm.tools.quantize.QUANTIZABLE; the quantized tensors are read back
(tinyllm.gguf_file + gguf.quants.dequantize) and tests/fixtures/quantize/llama_cpp_rmse.json
keeps, per type and tensor, the RMSE against the F32 input and the sha256 of llama.cpp's
bytes, with the model parameters and the F32 file's sha256 (the test rebuilds the same
input and checks it).  The script also prints tinyllm's RMSE ratio and byte agreement.

--real also compares on SmolLM2's F32 copy in models/ (local only; printed, not stored).
--time only times tinyllm.tools.quantize.quantize_rows per type on all of SmolLM2's F32 weights
(135M, reshaped to rows of 1536 so every type applies); needs no llama.cpp.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from synthetic_gguf import write_model  # noqa: E402

from tinyllm.gguf_file import GGUFFile  # noqa: E402
from tinyllm.registry import sha256_file as sha256  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "quantize" / "llama_cpp_rmse.json"
MODEL = dict(arch="llama", n_layer=2, n_embd=512, n_ff=1536, n_head=8, n_head_kv=4,
             n_vocab=8192, seed=5)
EDGE_TENSOR = "blk.1.attn_v.weight"       # (256, 512)
HEAVY_TENSOR = "blk.0.ffn_down.weight"    # (512, 1536)
OVERLAY_SEED = 1234
# llama_model_quantize's ftype for each type (with pure, every matrix gets the ftype's type)
FTYPES = {"F32": "ALL_F32", "F16": "MOSTLY_F16", "BF16": "MOSTLY_BF16", "Q8_0": "MOSTLY_Q8_0",
          "Q4_0": "MOSTLY_Q4_0", "Q4_1": "MOSTLY_Q4_1", "Q5_0": "MOSTLY_Q5_0",
          "Q5_1": "MOSTLY_Q5_1", "Q2_K": "MOSTLY_Q2_K", "Q3_K": "MOSTLY_Q3_K_M",
          "Q4_K": "MOSTLY_Q4_K_M", "Q5_K": "MOSTLY_Q5_K_M", "Q6_K": "MOSTLY_Q6_K",
          "IQ4_NL": "MOSTLY_IQ4_NL"}


# ---- the input model (also used by the test) ------------------------------------------------------
def edge_case_rows(n_rows: int, n_cols: int, rng) -> np.ndarray:
    """A matrix whose rows are the cases quantizers get wrong: every 256-weight super-block
    and 32/16-weight block of a row shares the row's kind."""
    x = (rng.standard_normal((n_rows, n_cols)) * 0.05).astype(np.float32)
    g = rng.standard_normal(n_cols).astype(np.float32)
    x[0] = 0.0                                           # all zero
    x[1] = 0.3                                           # constant positive
    x[2] = -0.7                                          # constant negative
    x[3] = g * 1e-30                                     # tiny (f16 scales underflow to 0)
    x[4] = g * 1e-40                                     # float32 subnormals
    x[5] = g * 0.05
    x[5, 100] = 40.0                                     # one huge outlier
    x[6] = -np.abs(g) * 0.05                             # negative only
    x[7] = np.abs(g) * 0.05 + 0.01                       # positive only, away from 0
    x[8] = g * 1e4                                       # large but f16-representable scales
    x[9] = np.where(np.arange(n_cols) % 32 < 16, 0.0, g * 0.05)      # zero half-blocks
    x[10] = np.where(np.arange(n_cols) % 256 < 16, g * 0.05, 0.0)    # one live sub-block
    x[11] = np.round(g * 2) * 0.01                       # few distinct values (ties)
    x[12] = np.where(np.arange(n_cols) % 16 == 0, -1.0, 0.001 * g)   # one big negative / 16
    x[13:32] = (rng.standard_t(2, (19, n_cols)) * 0.02).astype(np.float32)   # heavy tails
    return x


def heavy_tailed(n_rows: int, n_cols: int, rng) -> np.ndarray:
    """Laplace weights with per-row scales and rare large outliers (as trained weights have)."""
    x = rng.laplace(0.0, 0.02, (n_rows, n_cols)) * rng.uniform(0.3, 3.0, (n_rows, 1))
    spikes = rng.random((n_rows, n_cols)) < 1e-3
    x[spikes] *= 20
    return x.astype(np.float32)


def write_input(path) -> Path:
    """The F32 model the fixture describes: write_model(**MODEL) plus the two overlays."""
    write_model(path, **MODEL)
    rng = np.random.default_rng(OVERLAY_SEED)
    g = GGUFFile(str(path))
    patches = []
    for name, make in ((EDGE_TENSOR, edge_case_rows), (HEAVY_TENSOR, heavy_tailed)):
        t = g.tensors[name]
        patches.append((g.data_start + t.offset, make(t.ne[1], t.ne[0], rng)))
    g.close()
    with open(path, "r+b") as f:
        for offset, x in patches:
            f.seek(offset)
            f.write(np.ascontiguousarray(x, np.float32).tobytes())
    return Path(path)


def matrices(path) -> dict:
    """name -> float32 (rows, cols) for every 2-D tensor of an F32 GGUF (copies)."""
    g = GGUFFile(str(path))
    out = {n: np.array(g.tensor(n), np.float32) for n, t in g.tensors.items() if len(t.ne) == 2}
    g.close()
    return out


def rmse(a, b) -> float:
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


# ---- llama.cpp ---------------------------------------------------------------------------------------
def llama_quantize(src, dst, type_name: str) -> None:
    import llama_cpp
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_{FTYPES[type_name]}")
    params.pure = True
    params.nthread = 1
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise SystemExit(f"llama_model_quantize({src}, {type_name}) failed: {rc}")


def quantized(path, names) -> dict:
    """name -> (type name, raw bytes (rows, row_bytes), dequantized float32 (rows, cols))."""
    import gguf
    g = GGUFFile(str(path))
    out = {}
    for n in names:
        t = g.tensors[n]
        raw = np.array(g.raw(n))
        deq = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(t.ggml_type))
        out[n] = (t.type_name, raw, np.asarray(deq, np.float32).reshape(t.ne[1], t.ne[0]))
    g.close()
    return out


def compare(weights: dict, llama: dict, label: str) -> dict:
    """Per type: tinyllm / llama.cpp RMSE ratio (worst tensor, and over all weights), bytes equal."""
    import gguf
    from tinyllm.tools.quantize import quantize_rows
    rows = {}
    for name, x in weights.items():
        T, raw, deq = llama[name]
        t0 = time.perf_counter()
        ours = quantize_rows(x, T)
        dt = time.perf_counter() - t0
        ours_deq = gguf.quants.dequantize(ours, gguf.GGMLQuantizationType[T]).reshape(x.shape)
        r = rows.setdefault(T, dict(sq_ours=0.0, sq_llama=0.0, n=0, worst=0.0, equal=0,
                                    tensors=0, blocks_diff=0, blocks=0, seconds=0.0))
        e_ours, e_llama = rmse(ours_deq, x), rmse(deq, x)
        r["sq_ours"] += e_ours ** 2 * x.size
        r["sq_llama"] += e_llama ** 2 * x.size
        r["n"] += x.size
        r["worst"] = max(r["worst"], e_ours / e_llama if e_llama else (1.0 if e_ours == 0 else np.inf))
        r["equal"] += int(np.array_equal(ours, raw))
        r["tensors"] += 1
        bs, ts = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[T]]
        diff = (ours.reshape(-1, ts) != raw.reshape(-1, ts)).any(axis=1)
        r["blocks_diff"] += int(diff.sum())
        r["blocks"] += diff.size
        r["seconds"] += dt
    print(f"\n{label}: tinyllm vs llama.cpp")
    print("type    ratio(all) worst-tensor  tensors-identical  blocks-differing   tinyllm s")
    for T, r in rows.items():
        ratio = np.sqrt(r["sq_ours"] / r["sq_llama"]) if r["sq_llama"] else 1.0
        print(f"{T:7s} {ratio:9.5f} {r['worst']:12.5f}   {r['equal']:4d}/{r['tensors']:<4d}      "
              f"{r['blocks_diff']:8d}/{r['blocks']:<9d} {r['seconds']:7.2f}")
    return rows


def time_smollm2():
    from tinyllm.tools.quantize import QUANTIZABLE, quantize_rows
    weights = matrices(ROOT / "models" / "SmolLM2-135M-Instruct.F32.gguf")
    x = np.concatenate([w.reshape(-1) for w in weights.values()]).reshape(-1, 1536)
    print(f"{x.size / 1e6:.1f}M weights as {x.shape}, one thread")
    for T in QUANTIZABLE:
        t0, c0 = time.perf_counter(), time.process_time()
        quantize_rows(x, T)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(f"{T:7s} {dt:6.2f} s wall  {cpu:6.2f} s cpu  {x.size / cpu / 1e6:6.1f} M weights/cpu-s",
              flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real", action="store_true", help="also compare on models/SmolLM2 F32 (local)")
    ap.add_argument("--time", action="store_true", help="only time tinyllm on SmolLM2's weights")
    a = ap.parse_args()
    if a.time:
        return time_smollm2()
    import llama_cpp
    from tinyllm.tools.quantize import QUANTIZABLE
    fixture = dict(model=MODEL, edge_tensor=EDGE_TENSOR, heavy_tensor=HEAVY_TENSOR,
                   overlay_seed=OVERLAY_SEED, llama_cpp_python=llama_cpp.__version__,
                   rmse={}, sha256={})
    with tempfile.TemporaryDirectory() as tmp:
        src = write_input(Path(tmp) / "input.F32.gguf")
        fixture["f32_sha256"] = sha256(src)
        weights = matrices(src)
        llama_all = {}
        for T in QUANTIZABLE:
            dst = Path(tmp) / f"q.{T}.gguf"
            llama_quantize(src, dst, T)
            q = quantized(dst, weights)
            wrong = {n: t for n, (t, _, _) in q.items() if t != T}
            if wrong:
                raise SystemExit(f"{T}: llama.cpp chose other types: {wrong}")
            fixture["rmse"][T] = {n: rmse(deq, weights[n]) for n, (_, _, deq) in q.items()}
            fixture["sha256"][T] = {n: hashlib.sha256(raw.tobytes()).hexdigest()
                                    for n, (_, raw, _) in q.items()}
            llama_all[T] = q
            dst.unlink()
        for T in QUANTIZABLE:
            compare(weights, llama_all[T], f"synthetic {T}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(fixture, indent=1, sort_keys=True) + "\n")
    print("wrote", OUT, OUT.stat().st_size, "bytes")

    if a.real:
        src = ROOT / "models" / "SmolLM2-135M-Instruct.F32.gguf"
        weights = matrices(src)
        with tempfile.TemporaryDirectory() as tmp:
            for T in QUANTIZABLE:
                dst = Path(tmp) / f"real.{T}.gguf"
                llama_quantize(src, dst, T)
                compare(weights, quantized(dst, weights), f"SmolLM2-135M {T} (with llama.cpp's fallbacks)")
                dst.unlink()


if __name__ == "__main__":
    main()
