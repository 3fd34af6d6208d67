"""llama.cpp's reference for `tinyllm quantize`: type mixes and logits, both directions.

    /work/refenv/venv/bin/python scripts/make_quant_model_fixtures.py [--only types|logits]

Writes tests/fixtures/quant_models/:

  types.json   for each model (the synthetic llama below, SmolLM2-135M, Gemma 3 270M)
               and each target (F16 ... Q6_K, the mixes _S/_M/_L): the ggml type
               llama.cpp's quantizer (llama_model_quantize, no imatrix) gave every
               tensor, as one space-separated string in the file's tensor order.
               The real models are quantized from their F32 copies in models/;
               tests check tinyllm.tools.quantize.mixes against this with only the
               headers of the quantized copies CI has.
  logits_1.npz, logits_2.npz (legacy targets, k-quant targets)
               for the synthetic model and each target: the sha256 of the file
               tinyllm.tools.quantize.model writes, and llama.cpp's final-position logits
               (float16) on PROMPT when it runs that file.  tests rebuild the
               synthetic F32 model, quantize it, check the sha256 (so llama.cpp ran
               exactly those bytes) and compare tinyllm's logits.
  tensor_sha256.json  per target, per tensor of llama.cpp's own quantized synthetic
               file: its type and sha256 (16 hex digits).  tinyllm must write the same.
  report.json  the numbers for the report: type-choice differences, KL of tinyllm vs
               llama.cpp on tinyllm's file (both activation modes) and on llama.cpp's
               own quantized file (tinyllm reading it), per target.

The tinyllm side runs in the dev venv (/work/main/.venv) in a subprocess, so this
script's own process never mixes llama_cpp and the numba kernels.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from synthetic_gguf import write_model  # noqa: E402
from tinyllm.gguf_file import GGUFFile  # noqa: E402  (pure numpy)

OUT = ROOT / "tests" / "fixtures" / "quant_models"
DEV_PYTHON = ROOT / ".venv" / "bin" / "python"
TARGETS = ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_S", "Q3_K_M",
           "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K"]
# The synthetic model: every width a multiple of 256, so k-quants apply everywhere.
SYNTH = dict(arch="llama", n_layer=2, n_embd=512, n_ff=1536, n_head=8, n_head_kv=4,
             n_vocab=8192, seed=0)
PROMPT = [int(i) for i in np.random.default_rng(11).integers(100, SYNTH["n_vocab"], size=32)]
REAL = {"smollm2-135m": "SmolLM2-135M-Instruct.F32.gguf", "gemma3-270m": "gemma-3-270m.F32.gguf"}


def llama_quantize(src, dst, target: str, pure: bool = False) -> None:
    """llama.cpp's quantizer, one thread.  target: LLAMA_FTYPE_MOSTLY_<target>, or "F32"
    (LLAMA_FTYPE_ALL_F32: an F32 copy of a quantized file, exactly its dequantized weights).
    pure: every matrix gets the target's type (no per-tensor mix)."""
    import llama_cpp
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = (llama_cpp.LLAMA_FTYPE_ALL_F32 if target == "F32"
                    else getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{target}"))
    params.allow_requantize = target == "F32"
    params.pure = pure
    params.nthread = 1
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise SystemExit(f"llama_model_quantize({src}, {target}) failed: {rc}")


def tensor_types(path) -> dict:
    g = GGUFFile(str(path))
    out = {n: t.type_name for n, t in g.tensors.items()}
    g.close()
    return out


def make_types(tmp: Path) -> dict:
    synth = tmp / "synthetic.F32.gguf"
    write_model(synth, **SYNTH)
    models = {"synthetic": synth, **{k: ROOT / "models" / v for k, v in REAL.items()}}
    types = {}
    for name, src in models.items():
        order = list(GGUFFile(str(src)).tensors)    # the input file's tensor order
        types[name] = {"tensors": order, "types": {}}
        for target in TARGETS:
            t0 = time.time()
            dst = tmp / f"{name}.{target}.gguf"
            llama_quantize(src, dst, target)
            tt = tensor_types(dst)
            types[name]["types"][target] = " ".join(tt[n] for n in order)
            dst.unlink()
            print(f"{name:14s} {target:7s} {time.time() - t0:5.1f}s "
                  f"{sorted(set(tt.values()))}", flush=True)
    return types


# ---- the tinyllm side: runs in the dev venv (numba), called by the llama.cpp side -----------------
def tinyllm_logits(path) -> np.ndarray:
    from tinyllm.model import Model
    from tinyllm.startup import default_numerics
    m = Model(str(path), n_ctx=64, numerics=default_numerics())
    return np.asarray(m.forward(PROMPT, 0), np.float32)


def tinyllm_side(tmp: Path) -> None:
    """In tmp: quantize synthetic.F32.gguf to tiny.<T>.gguf for every target (unless there),
    then tinyllm's logits on tiny.<T> and llama.<T> -> tinyllm_<mode>.npz."""
    from tinyllm.startup import default_numerics
    from tinyllm.tools.quantize.model import quantize_model
    out = {}
    for target in TARGETS:
        tiny = tmp / f"tiny.{target}.gguf"
        if not tiny.exists():
            t0 = time.time()
            r = quantize_model(tmp / "synthetic.F32.gguf", tiny, target)
            out[f"seconds_{target}"] = time.time() - t0
            print(f"tinyllm quantize {target:7s} {time.time() - t0:5.2f}s {r.bpw:.3f} bpw", flush=True)
        out[f"sha256_{target}"] = hashlib.sha256(tiny.read_bytes()).hexdigest()
        out[f"tiny_{target}"] = tinyllm_logits(tiny)
        out[f"llama_{target}"] = tinyllm_logits(tmp / f"llama.{target}.gguf")
    np.savez(tmp / f"tinyllm_{'llama' if default_numerics() == 'llama' else 'exact'}.npz", **out)


# ---- the llama.cpp side --------------------------------------------------------------------------
def llama_logits(path, prompt=None, n_batch: int = 512) -> np.ndarray:
    """llama.cpp's final-position logits on `prompt` (default PROMPT), one thread;
    n_batch=1 feeds it one token per decode call (its one-token path)."""
    import llama_cpp
    from llama_cpp import Llama
    llm = Llama(model_path=str(path), n_ctx=64, n_batch=n_batch, n_threads=1, n_threads_batch=1,
                verbose=False)
    llm.eval(PROMPT if prompt is None else prompt)
    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    out = np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).astype(np.float32).copy()
    del llm
    return out


def kl(p_logits, q_logits) -> float:
    """KL(p || q) of the two softmaxes, float64."""
    def log_softmax(v):
        v = np.asarray(v, np.float64)
        v = v - v.max()
        return v - np.log(np.exp(v).sum())
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return float(np.sum(np.exp(lp) * (lp - lq)))


def tensor_hashes(path) -> dict:
    """name -> type and the first 16 hex digits of the sha256 of the tensor's bytes."""
    g = GGUFFile(str(path))
    return {n: f"{t.type_name} {hashlib.sha256(g.raw(n).tobytes()).hexdigest()[:16]}"
            for n, t in g.tensors.items()}


def same_bytes(a, b) -> tuple[int, int]:
    """(tensors whose type and bytes are identical in both files, tensors)."""
    ga, gb = GGUFFile(str(a)), GGUFFile(str(b))
    same = sum(ga.tensors[n].ggml_type == gb.tensors[n].ggml_type
               and np.array_equal(ga.raw(n), gb.raw(n)) for n in ga.tensors)
    return int(same), len(ga.tensors)


def make_logits(tmp: Path, types: dict) -> None:
    write_model(tmp / "synthetic.F32.gguf", **SYNTH)
    for target in TARGETS:
        llama_quantize(tmp / "synthetic.F32.gguf", tmp / f"llama.{target}.gguf", target)
    for mode in ("exact", "llama"):
        env = dict(os.environ, TINYLLM_ACTIVATIONS=mode, NUMBA_NUM_THREADS="1")
        subprocess.run([str(DEV_PYTHON), __file__, "--tinyllm-side", str(tmp)], env=env, check=True)
    tl = {m: np.load(tmp / f"tinyllm_{m}.npz") for m in ("exact", "llama")}
    fixture, report = {}, {"synthetic": SYNTH, "prompt": PROMPT, "targets": {}}
    for target in TARGETS:
        tiny, ref = tmp / f"tiny.{target}.gguf", tmp / f"llama.{target}.gguf"
        lc_tiny, lc_ref = llama_logits(tiny), llama_logits(ref)
        fixture[f"logits_{target}"] = lc_tiny.astype(np.float16)
        fixture[f"sha256_{target}"] = np.array(str(tl["exact"][f"sha256_{target}"]))
        same, n = same_bytes(tiny, ref)
        row = {"sha256": str(tl["exact"][f"sha256_{target}"]),
               "tinyllm_quantize_seconds": float(tl["exact"][f"seconds_{target}"]),
               "tensors_bit_identical_to_llama_cpp": f"{same}/{n}",
               "file_bytes": {"tinyllm": tiny.stat().st_size, "llama_cpp": ref.stat().st_size},
               "argmax_llama_cpp_on_tinyllm_file": int(np.argmax(lc_tiny))}
        for m in ("exact", "llama"):
            row[f"kl_tinyllm_file_{m}"] = kl(lc_tiny, tl[m][f"tiny_{target}"])
            row[f"kl_llama_cpp_file_{m}"] = kl(lc_ref, tl[m][f"llama_{target}"])
            row[f"kl_tinyllm_file_{m}_float16_fixture"] = kl(lc_tiny.astype(np.float16), tl[m][f"tiny_{target}"])
            row[f"argmax_agree_{m}"] = bool(np.argmax(lc_tiny) == np.argmax(tl[m][f"tiny_{target}"]))
        row["kl_llama_cpp_tinyllm_file_vs_its_own_file"] = kl(lc_ref, lc_tiny)
        report["targets"][target] = row
        print(f"{target:7s} same bytes {same:>2}/{n}  KL on tinyllm's file exact {row['kl_tinyllm_file_exact']:.2e} "
              f"llama {row['kl_tinyllm_file_llama']:.2e} | on llama.cpp's file exact "
              f"{row['kl_llama_cpp_file_exact']:.2e} llama {row['kl_llama_cpp_file_llama']:.2e}", flush=True)
    save_logits(fixture)
    write_json(OUT / "tensor_sha256.json",
               {t: tensor_hashes(tmp / f"llama.{t}.gguf") for t in TARGETS})
    report["type_choice_differences"] = type_differences(types) if types else None
    write_json(OUT / "report.json", report)


def save_logits(fixture: dict) -> None:
    """16 targets x 8192 float16 logits do not fit one 200 KB fixture: the legacy
    targets go to logits_1.npz, the k-quant mixes to logits_2.npz (each with the
    prompt and the synthetic model's parameters)."""
    common = {"prompt": np.array(PROMPT), "synthetic": np.array(json.dumps(SYNTH))}
    for part, targets in ((1, TARGETS[:7]), (2, TARGETS[7:])):
        keys = {k: v for k, v in fixture.items() if k.split("_", 1)[1] in targets}
        np.savez_compressed(OUT / f"logits_{part}.npz", **common, **keys)


def type_differences(types: dict) -> dict:
    """Per model and target: tensors where tinyllm.tools.quantize.mixes disagrees with llama.cpp."""
    from tinyllm.tools.quantize.mixes import ModelInfo, choose_types
    files = {"smollm2-135m": ROOT / "models" / REAL["smollm2-135m"],
             "gemma3-270m": ROOT / "models" / REAL["gemma3-270m"]}
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        files["synthetic"] = write_model(Path(tmp) / "s.gguf", **SYNTH)
        for name, path in files.items():
            g = GGUFFile(str(path))
            info = [(t.name, t.ne, t.type_name) for t in g.tensors.values()]
            model = ModelInfo.from_metadata(g.metadata)
            for target, s in types[name]["types"].items():
                want = dict(zip(types[name]["tensors"], s.split()))
                got = dict(zip([t[0] for t in info], choose_types(info, target, model)))
                out[f"{name} {target}"] = {n: [want[n], got[n]] for n in want if want[n] != got[n]}
            g.close()
    return out


def make_real(tmp: Path) -> None:
    """SmolLM2 and Gemma 3 from their F32 copies, every target, both quantizers: tensors
    with identical bytes, tinyllm's time and peak RSS (`tinyllm quantize` under
    /usr/bin/time, one numba thread) beside llama.cpp's time (1 thread)."""
    report = {}
    for name, fname in REAL.items():
        src = ROOT / "models" / fname
        for target in TARGETS:
            ref, tiny = tmp / f"ref.{target}.gguf", tmp / f"tiny.{target}.gguf"
            t0 = time.time()
            llama_quantize(src, ref, target)
            t_ref = time.time() - t0
            env = dict(os.environ, NUMBA_NUM_THREADS="1")
            r = subprocess.run(["/usr/bin/time", "-f", "%e %M", str(DEV_PYTHON), "-m", "tinyllm", "quantize",
                                str(src), str(tiny), "--type", target], env=env, capture_output=True,
                               text=True, check=True, cwd=ROOT)
            wall, rss_kb = r.stderr.strip().splitlines()[-1].split()
            same, n = same_bytes(tiny, ref)
            report[f"{name} {target}"] = {"tensors_bit_identical": f"{same}/{n}",
                                          "tinyllm_seconds": float(wall), "tinyllm_peak_rss_mib": int(rss_kb) / 1024,
                                          "llama_cpp_seconds": t_ref}
            print(f"{name:13s} {target:7s} identical {same:>3}/{n}  tinyllm {float(wall):5.1f}s "
                  f"{int(rss_kb) / 1024:6.0f} MiB  llama.cpp {t_ref:5.1f}s", flush=True)
            ref.unlink()
            tiny.unlink()
    write_json(OUT / "report_real.json", report)


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["types", "logits", "real"], action="append",
                    help="real: byte agreement, time and peak RSS on the real models (not a fixture)")
    ap.add_argument("--tinyllm-side", metavar="DIR", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.tinyllm_side:
        return tinyllm_side(Path(a.tinyllm_side))
    only = set(a.only or ["types", "logits"])
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if "types" in only:
            write_json(OUT / "types.json", make_types(Path(tmp)))
        if "logits" in only:
            make_logits(Path(tmp), json.loads((OUT / "types.json").read_text()))
        if "real" in only:
            make_real(Path(tmp))


if __name__ == "__main__":
    main()
