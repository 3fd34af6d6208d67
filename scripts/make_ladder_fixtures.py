"""llama.cpp's perplexity on every file of SmolLM2's quantization ladder.

    /work/refenv/venv/bin/python scripts/make_ladder_fixtures.py            # the fixture, ~10 min
    /work/refenv/venv/bin/python scripts/make_ladder_fixtures.py --table    # the F32-source table, ~45 min

Fixture (default): for each type `tinyllm ladder` makes by default (tinyllm.tools.ladder.
DEFAULT_TYPES), quantize the pulled SmolLM2-135M-Instruct.Q4_1.gguf -- the only SmolLM2
file CI has -- with tinyllm's own quantizer (`tinyllm quantize`, run by the dev venv),
record the file's sha256 and, on the ladder's default windows (--ctx 512, --windows 4)
of tests/fixtures/text/alice_ch1-3.txt, three llama.cpp perplexities:

  ppl            the file, one batch per window: what llama.cpp reports
  ppl_one_token  the file, one token per decode: llama.cpp against itself (its 8-bit
                 rounding of activations on another kernel path)
  ppl_f32_copy   llama.cpp's own F32 copy of the file: the same weights times unrounded
                 activations, which is the arithmetic tinyllm does by default

and writes tests/fixtures/smollm2-135m/ladder_perplexity.json.  tests/test_ladder_perplexity.py
rebuilds each file, checks its sha256 (so it scores the very bytes llama.cpp scored) and
compares tinyllm's perplexity on the same windows with ppl_f32_copy (0.05 %) and ppl (1 %).
Unless --no-check, it also prints tinyllm's own numbers (`tinyllm perplexity`, and with
TINYLLM_ACTIVATIONS=llama) beside llama.cpp's.

Table (--table): the same comparison for the ladder made from the F32 copy
(models/SmolLM2-135M-Instruct.F32.gguf), whose files are taken from --ladder-dir
(made there with `tinyllm quantize` when missing; a cached file is checked against a
fresh quantization and the table says whether it matches), on --ctx 512 x --windows 16
(all of the text).  Both sides are computed here: llama.cpp in this process, tinyllm by
`tinyllm perplexity --json` in the dev venv, in both activation modes.  Prints a
markdown table and writes it to --ladder-dir/llama_cpp_vs_tinyllm.json.  Not a fixture:
the whole-text numbers behind the tolerances of the test.

Windows are those of tinyllm.tools.perplexity and of make_fixtures.py: the text tokenized
without BOS, cut into non-overlapping windows of ctx tokens, each evaluated from an
empty KV cache, every token after a window's first scored (ctx - 1 per window).
llama.cpp runs with 1 thread (n_batch >= ctx: one batch per window); tinyllm with
--threads 1.  The tinyllm side never runs in this process, which never mixes
llama_cpp with tinyllm's numba kernels (only tinyllm.tools.ladder's list of types and the
pure-numpy GGUF reader are imported here).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import llama_cpp
from llama_cpp import Llama

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tinyllm.gguf_file import GGUFFile  # noqa: E402  (pure numpy)
from tinyllm.tools.ladder import DEFAULT_TYPES  # noqa: E402  (imports nothing heavy)
from tinyllm.registry import sha256_file as sha256  # noqa: E402  (stdlib only)

MODELS = ROOT / "models"
SOURCE_Q = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE_F32 = MODELS / "SmolLM2-135M-Instruct.F32.gguf"
TEXT = ROOT / "tests" / "fixtures" / "text" / "alice_ch1-3.txt"
OUT = ROOT / "tests" / "fixtures" / "smollm2-135m" / "ladder_perplexity.json"
DEV_PYTHON = ROOT / ".venv" / "bin" / "python"
N_THREADS = 1
SEED = 1234


def library_info() -> dict:
    lib = Path(llama_cpp.__file__).parent / "lib"
    return {
        "llama_cpp_python": llama_cpp.__version__,
        "shared_libraries": sorted(p.name for p in lib.glob("lib*.so.*.*.*")),
        "system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "generated": datetime.date.today().isoformat(),
        "script": "scripts/make_ladder_fixtures.py",
    }


def dev_env(activations: str = "exact") -> dict:
    # one numba thread: another process may be timing kernels on this machine
    return dict(os.environ, NUMBA_NUM_THREADS="1", TINYLLM_ACTIVATIONS=activations)


def tinyllm_quantize(src: Path, dst: Path, target: str) -> float:
    """`tinyllm quantize SRC DST --type T` in the dev venv; returns its wall time."""
    t0 = time.time()
    r = subprocess.run([str(DEV_PYTHON), "-m", "tinyllm", "quantize", str(src), str(dst), "--type", target],
                       env=dev_env(), cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"tinyllm quantize {src} {target} failed:\n{r.stderr[-2000:]}")
    return time.time() - t0


def tinyllm_perplexity(path: Path, ctx: int, windows: int, activations: str = "exact") -> dict:
    """`tinyllm perplexity --json` in the dev venv: {"ppl", "tokens"}.  activations="llama":
    with TINYLLM_ACTIVATIONS=llama (activations rounded to 8 bits as llama.cpp does)."""
    r = subprocess.run([str(DEV_PYTHON), "-m", "tinyllm", "perplexity", str(path), "--file", str(TEXT),
                        "--ctx", str(ctx), "--windows", str(windows), "--threads", "1", "--json"],
                       env=dev_env(activations), cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"tinyllm perplexity {path} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def pct(a: float, b: float, digits: int = 3) -> str:
    return f"{100 * (a / b - 1):+.{digits}f} %"


# ---- llama.cpp ---------------------------------------------------------------------------------

def tokenizer_info(path: Path):
    """(text tokens without BOS, add_bos, bos_id) from llama.cpp's tokenizer."""
    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
    bos_id = int(llama_cpp.llama_vocab_bos(vocab))
    tokens = llm.tokenize(TEXT.read_text(encoding="utf-8").encode("utf-8"), add_bos=False, special=False)
    return tokens, add_bos, bos_id


def make_windows(tokens, ctx: int, windows: int, add_bos: bool, bos_id: int) -> list:
    n = min(len(tokens) // ctx, windows)
    if n < windows:
        raise SystemExit(f"the text has {len(tokens)} tokens: only {n} windows of {ctx}, not {windows}")
    out = []
    for w in range(n):
        window = list(tokens[w * ctx:(w + 1) * ctx])
        if add_bos:
            window[0] = bos_id            # as llama.cpp's perplexity tool (and tinyllm) do
        out.append(window)
    return out


def log_softmax_rows(rows) -> np.ndarray:
    rows = np.asarray(rows, np.float64)
    m = rows.max(axis=1, keepdims=True)
    return rows - (m + np.log(np.exp(rows - m).sum(axis=1, keepdims=True)))


def llama_perplexity(path: Path, windows: list, ctx: int, n_ubatch: int = 512) -> dict:
    """NLL of every window from an empty KV cache, one batch per window (n_ubatch=1: one
    token per decode step instead, llama.cpp's single-row kernels)."""
    llm = Llama(model_path=str(path), n_ctx=ctx, n_batch=max(512, ctx), n_ubatch=n_ubatch, n_threads=N_THREADS,
                n_threads_batch=N_THREADS, seed=SEED, logits_all=True, verbose=False)
    nlls = []
    for window in windows:
        llm.reset()
        llm.eval(window)
        logp = log_softmax_rows(llm.scores[:ctx - 1])
        nlls.append(float(-logp[np.arange(ctx - 1), np.asarray(window[1:])].sum()))
    del llm
    n_scored = len(windows) * (ctx - 1)
    return {"ppl": float(np.exp(sum(nlls) / n_scored)), "tokens": n_scored, "windows": len(windows),
            "ctx": ctx, "nll_per_window": nlls}


@contextlib.contextmanager
def quiet_stderr():
    """llama_model_quantize prints a line per tensor on fd 2: send it to /dev/null."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def llama_f32_copy(src: Path, dst: Path) -> Path:
    """llama.cpp's own dequantization of every tensor to F32 (its quantizer, ALL_F32): the
    same weights as src, but llama.cpp then multiplies them by unrounded activations."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = N_THREADS
    params.ftype = llama_cpp.LLAMA_FTYPE_ALL_F32
    params.allow_requantize = True
    with quiet_stderr():
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise SystemExit(f"llama_model_quantize({src}, ALL_F32) failed: {rc}")
    return dst


def reference(path: Path, windows: list, ctx: int, tmp: Path) -> dict:
    """llama.cpp's perplexity on the file (ppl, nll_per_window, ...), and the two numbers that
    say what a difference from it means: on the file one token per decode (ppl_one_token:
    llama.cpp against itself, its rounding of activations on another path) and on its F32
    copy (ppl_f32_copy: the same weights without that rounding, what tinyllm computes)."""
    ref = llama_perplexity(path, windows, ctx)
    ref["ppl_one_token"] = llama_perplexity(path, windows, ctx, n_ubatch=1)["ppl"]
    f32 = llama_f32_copy(path, tmp / "f32_copy.gguf")
    ref["ppl_f32_copy"] = llama_perplexity(f32, windows, ctx)["ppl"]
    f32.unlink()
    return ref


# ---- the fixture -------------------------------------------------------------------------------

def make_fixture(args, types: list) -> None:
    tokens, add_bos, bos_id = tokenizer_info(SOURCE_Q)
    windows = make_windows(tokens, args.ctx, args.windows, add_bos, bos_id)
    out = {
        "model_file": SOURCE_Q.name,
        "model_sha256": sha256(SOURCE_Q),
        "library": library_info(),
        "text": str(TEXT.relative_to(ROOT)),
        "ctx": args.ctx,
        "windows": len(windows),
        "window_ids": windows,
        "quantizer": "tinyllm.tools.quantize.model.quantize_model (`tinyllm quantize SRC DST --type T`), from the file above",
        "method": (
            "tokens = llama.cpp tokenize(text, add_bos=False, special=False); window w = "
            "tokens[w*ctx:(w+1)*ctx] for w < windows (first token -> BOS if the vocab adds BOS); "
            "each window decoded from an empty KV cache in one batch; NLL summed over j = 1..ctx-1 "
            "of -log softmax(logits[j-1])[window[j]] in float64; ppl = exp(sum NLL / tokens), "
            "tokens = windows * (ctx - 1).  ppl_one_token: the same with n_ubatch = 1 (one token per "
            "decode).  ppl_f32_copy: the same on llama_model_quantize(file, LLAMA_FTYPE_ALL_F32)."
        ),
        "settings": {"n_threads": N_THREADS, "seed": SEED, "logits_all": True},
        "types": {},
    }
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for target in types:
            dst = Path(tmp) / f"{target}.gguf"
            secs = tinyllm_quantize(SOURCE_Q, dst, target)
            ref = reference(dst, windows, args.ctx, Path(tmp))
            row = {"sha256": sha256(dst), "file_bytes": dst.stat().st_size, **ref}
            out["types"][target] = row
            line = (f"{target:7s} quantized in {secs:4.1f}s  llama.cpp ppl {ref['ppl']:.4f} "
                    f"(one token per decode {pct(ref['ppl_one_token'], ref['ppl'])}, F32 copy "
                    f"{pct(ref['ppl_f32_copy'], ref['ppl'])})")
            if not args.no_check:
                for mode in ("exact", "llama"):
                    ours = tinyllm_perplexity(dst, args.ctx, args.windows, mode)
                    assert ours["tokens"] == ref["tokens"], (ours, ref["tokens"])
                    line += f"  tinyllm {mode} {ours['ppl']:.4f} ({pct(ours['ppl'], ref['ppl'])})"
            print(line, flush=True)
            dst.unlink()
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)} ({OUT.stat().st_size:,} bytes)")


# ---- the F32-source table ------------------------------------------------------------------------

def make_table(args, types: list) -> None:
    ladder = Path(args.ladder_dir)
    ladder.mkdir(parents=True, exist_ok=True)
    tokens, add_bos, bos_id = tokenizer_info(SOURCE_F32)
    windows = make_windows(tokens, args.ctx, args.windows, add_bos, bos_id)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for target in ["F32"] + types:
            path = SOURCE_F32 if target == "F32" else ladder / f"{target}.gguf"
            note = "the source"
            if target != "F32":
                if not path.is_file():
                    tinyllm_quantize(SOURCE_F32, path, target)
                    note = "made now"
                else:
                    # a cached rung is usable whatever made it (both sides score the same
                    # bytes); say whether it is what today's quantizer writes
                    GGUFFile(str(path)).close()
                    fresh = Path(tmp) / f"{target}.gguf"
                    tinyllm_quantize(SOURCE_F32, fresh, target)
                    note = "cached = today's tinyllm quantize" if sha256(fresh) == sha256(path) else \
                        "cached, NOT what tinyllm quantize writes today"
                    fresh.unlink()
            t0 = time.time()
            if target == "F32":           # already unrounded: its F32 copy is itself
                ref = llama_perplexity(path, windows, args.ctx)
                ref["ppl_one_token"] = llama_perplexity(path, windows, args.ctx, n_ubatch=1)["ppl"]
                ref["ppl_f32_copy"] = ref["ppl"]
            else:
                ref = reference(path, windows, args.ctx, Path(tmp))
            t1 = time.time()
            ours = tinyllm_perplexity(path, args.ctx, args.windows)
            t2 = time.time()
            ours_llama = tinyllm_perplexity(path, args.ctx, args.windows, "llama")
            assert ours["tokens"] == ours_llama["tokens"] == ref["tokens"], (ours, ours_llama, ref["tokens"])
            row = {"type": target, "file": str(path), "sha256": sha256(path), "file_bytes": path.stat().st_size,
                   "llama_cpp_ppl": ref["ppl"], "llama_cpp_ppl_one_token": ref["ppl_one_token"],
                   "llama_cpp_ppl_f32_copy": ref["ppl_f32_copy"], "tinyllm_ppl": ours["ppl"],
                   "tinyllm_ppl_llama_activations": ours_llama["ppl"],
                   "rel_diff_pct": 100 * (ours["ppl"] / ref["ppl"] - 1),
                   "rel_diff_f32_copy_pct": 100 * (ours["ppl"] / ref["ppl_f32_copy"] - 1),
                   "rel_diff_llama_activations_pct": 100 * (ours_llama["ppl"] / ref["ppl"] - 1),
                   "tokens": ref["tokens"], "nll_per_window": ref["nll_per_window"],
                   "llama_cpp_seconds": t1 - t0, "tinyllm_seconds": t2 - t1, "note": note}
            rows.append(row)
            print(f"{target:7s} llama.cpp {ref['ppl']:.4f} (one token {pct(ref['ppl_one_token'], ref['ppl'])}, "
                  f"F32 copy {ref['ppl_f32_copy']:.4f})  tinyllm {ours['ppl']:.4f} "
                  f"{pct(ours['ppl'], ref['ppl'])} (vs F32 copy {pct(ours['ppl'], ref['ppl_f32_copy'], 4)}), "
                  f"with llama.cpp's rounding {ours_llama['ppl']:.4f} {pct(ours_llama['ppl'], ref['ppl'])}  "
                  f"[{note}]", flush=True)
    print(f"\nSmolLM2-135M-Instruct, ladder from {SOURCE_F32.name}: {len(windows)} windows of {args.ctx} "
          f"({rows[0]['tokens']} tokens scored) of {TEXT.name}\n")
    print("| type | MiB | llama.cpp | tinyllm | tinyllm vs llama.cpp | llama.cpp one token/decode "
          "| llama.cpp F32 copy | tinyllm vs F32 copy | tinyllm, llama rounding | vs llama.cpp |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['type']} | {r['file_bytes'] / 2**20:.1f} | {r['llama_cpp_ppl']:.4f} | {r['tinyllm_ppl']:.4f} "
              f"| {pct(r['tinyllm_ppl'], r['llama_cpp_ppl'])} "
              f"| {r['llama_cpp_ppl_one_token']:.4f} ({pct(r['llama_cpp_ppl_one_token'], r['llama_cpp_ppl'])}) "
              f"| {r['llama_cpp_ppl_f32_copy']:.4f} | {pct(r['tinyllm_ppl'], r['llama_cpp_ppl_f32_copy'], 4)} "
              f"| {r['tinyllm_ppl_llama_activations']:.4f} "
              f"| {pct(r['tinyllm_ppl_llama_activations'], r['llama_cpp_ppl'])} |")
    dst = ladder / "llama_cpp_vs_tinyllm.json"
    dst.write_text(json.dumps({"source": str(SOURCE_F32), "text": str(TEXT), "ctx": args.ctx,
                               "windows": len(windows), "library": library_info(), "rows": rows}, indent=1) + "\n")
    print(f"\nwrote {dst}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", action="store_true", help="the F32-source ladder table instead of the fixture")
    ap.add_argument("--types", default=DEFAULT_TYPES, help=f"comma-separated (default {DEFAULT_TYPES})")
    ap.add_argument("--ctx", type=int, default=512, help="window length (default 512, as `tinyllm ladder`)")
    ap.add_argument("--windows", type=int, default=None,
                    help="windows scored (default 4, as `tinyllm ladder`; 16 = all of the text with --table)")
    ap.add_argument("--ladder-dir", default="/tmp/tinyllm-ladder/SmolLM2-135M-Instruct.F32",
                    help="--table: where the F32-source rungs are (missing ones are made there)")
    ap.add_argument("--tmp", default=None, help="directory for temporary model files")
    ap.add_argument("--no-check", action="store_true", help="fixture: skip tinyllm's own perplexity (printed only)")
    args = ap.parse_args()
    types = [t.strip().upper() for t in args.types.split(",") if t.strip()]
    if args.windows is None:
        args.windows = 16 if args.table else 4
    llama_cpp.llama_backend_init()
    if args.table:
        make_table(args, types)
    else:
        make_fixture(args, types)


if __name__ == "__main__":
    sys.exit(main())
