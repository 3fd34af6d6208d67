"""`tinyllm ladder`: one model quantized into each type, compared on size, quality and speed.

    tinyllm ladder MODEL [--types Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q4_0,Q3_K_M,Q2_K] [--file TEXT]
                         [--windows 4|all] [--ctx 512] [--out DIR]

For each rung of the ladder (the source itself, then every type):

    size        file bytes in MiB, and bits per weight = 8 * file bytes / parameters
    quality     perplexity on the text, and KL(p_source || p_rung) token by token
                (mean, 99th percentile, how often both rank the same token first):
                the source is the highest-precision file, so it is the reference; it
                runs over the text once, every rung following it batch by batch
    speed       decode tokens/s and peak RSS from `tinyllm bench FILE --json -p 32 -n 32`,
                each in a fresh process so every file's RSS is its own

The quantized files are made with tinyllm.tools.quantize.model.quantize_model and kept in
--out (default models/ladder/<source stem>/<type>.gguf); a file newer than its source
is reused.  The table is printed and written to ladder.csv and ladder.json, and a plot
of quality against size to ladder.png (needs matplotlib: pip install 'tinyllm[plot]').

Quantizing an already-quantized source (SmolLM2's Q4_1 release, say) rounds weights
that were already rounded: errors compound, so the ladder says so.  Give it the F32
or F16 original when there is one.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

from ..errors import TinyLLMError

DEFAULT_TYPES = "Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q4_0,Q3_K_M,Q2_K"
DEFAULT_TEXT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "text" / "alice_ch1-3.txt"
FLOAT_TYPES = ("F32", "F16", "BF16")
COLUMNS = ("type", "file", "mib", "bpw", "ppl", "ppl_delta_pct", "kld_mean", "kld_p99", "same_top_p",
           "tg_tok_s", "peak_rss_mib")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _windows_arg(s: str):
    if s == "all":
        return None
    try:
        n = int(s)
    except ValueError:
        n = 0
    if n <= 0:
        raise TinyLLMError(f"--windows must be a positive number or 'all', got {s!r}")
    return n


def add_arguments(p):
    p.add_argument("model", help="the source: registry name or .gguf path (best: the F32/F16 original)")
    p.add_argument("--types", default=DEFAULT_TYPES, help=f"comma-separated targets (default {DEFAULT_TYPES})")
    p.add_argument("--file", "-f", default=None, help="text for perplexity and KLD (default: the Alice text)")
    p.add_argument("--windows", default="4", help="windows of --ctx tokens to score, or 'all' (default 4)")
    p.add_argument("--ctx", "-c", type=int, default=512, help="window length in tokens (default 512)")
    p.add_argument("--out", default=None, help="directory for the files, table and plot "
                                                "(default models/ladder/<stem>/)")
    p.add_argument("--threads", "-t", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--no-bench", action="store_true", help="skip the speed / memory runs")


# ---- the source and its rungs ----------------------------------------------------------------

def weight_type(g) -> str:
    """The type holding most of the matrices' bytes: what a file "is" (F32, Q4_1, ...)."""
    by_type: dict = {}
    for t in g.tensors.values():
        if len(t.ne) >= 2 and any(n > 1 for n in t.ne[1:]):
            by_type[t.type_name] = by_type.get(t.type_name, 0) + t.n_bytes
    return max(by_type, key=by_type.get) if by_type else "F32"


def is_quantized(g) -> bool:
    return any(t.type_name not in FLOAT_TYPES for t in g.tensors.values())


def grid_levels(block):
    """How many evenly spaced levels a few weights sit on, or None if they sit on no such
    grid.  Weights dequantized from a block format are lo + step * k with integer k, so
    every gap between their distinct values is a whole number of steps; genuine float
    weights are not.  The step is the smallest gap divided by a small integer (16 weights
    out of up to 256 levels need not include two neighbours)."""
    import numpy as np
    u = np.unique(np.asarray(block, np.float64))
    if len(u) < 3:
        return None
    gaps = np.diff(u)
    for j in range(1, 17):
        r = gaps / (gaps.min() / j)
        if np.abs(r - np.round(r)).max() < 0.03:     # slack for values rounded again to F16
            return int(round((u[-1] - u[0]) / (gaps.min() / j))) + 1
    return None


def dequantized_bits(g, n_tensors: int = 6, n_blocks: int = 64):
    """For a float file whose weights were dequantized from a quantized model (SmolLM2's
    F32 copy, made from its Q4_1 release): the bits per weight of the grids of the first
    few matrices, e.g. [8, 4, 4, 4, 4, 4].  None when the weights look like genuine floats."""
    import numpy as np

    from ..quant import dequantize
    bits = []
    mats = [t for t in g.tensors.values()
            if len(t.ne) == 2 and t.ne[0] % 16 == 0 and t.type_name in FLOAT_TYPES]
    for t in mats[:n_tensors]:
        rows = dequantize(np.asarray(g.raw(t.name)[:max(1, n_blocks * 16 // t.ne[0])]), t.ggml_type)
        levels = [grid_levels(b) for b in rows.reshape(-1, 16)[:n_blocks]]
        on_grid = [n for n in levels if n is not None and n <= 256]
        if len(on_grid) >= 0.9 * len(levels):      # genuine floats (or bf16) have no grid
            bits.append(int(np.ceil(np.log2(max(on_grid)))))
    # most of them on grids (a 6-bit grid rounded again to F16 can blur past recognition)
    return bits if len(bits) > len(mats[:n_tensors]) / 2 else None


def parse_types(s: str) -> list:
    from .quantize.mixes import TARGETS
    types = [t.strip().upper() for t in s.split(",") if t.strip()]
    bad = [t for t in types if t not in TARGETS]
    if bad or not types:
        raise TinyLLMError(f"unknown ladder type {', '.join(bad) or repr(s)} (choose from {', '.join(TARGETS)})")
    return list(dict.fromkeys(types))        # in order, no repeats


def quantized_file(src: str, out_dir: Path, target: str) -> str:
    """out_dir/<target>.gguf, made from src unless a copy newer than src is there already."""
    from .quantize.model import quantize_model
    dst = out_dir / f"{target}.gguf"
    if dst.is_file() and dst.stat().st_mtime >= os.path.getmtime(src):
        log(f"{target}: reusing {dst}")
        return str(dst)
    log(f"{target}: quantizing {src} -> {dst}")
    report = quantize_model(src, str(dst), target)
    log(f"{target}: {report.file_size / 2**20:.1f} MiB in {report.seconds:.1f} s")
    return str(dst)


# ---- measuring one rung ----------------------------------------------------------------------

def bench(path: str, threads) -> dict:
    """Decode speed and peak RSS of `tinyllm bench` on this file, in a fresh process."""
    import subprocess
    cmd = [sys.executable, "-m", "tinyllm", "bench", path, "--json", "-p", "32", "-n", "32"]
    if threads:
        cmd += ["--threads", str(threads)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise TinyLLMError(f"tinyllm bench {path} failed: {last}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def measure(files: list, base, tok, text: str, ctx: int, windows) -> list:
    """Size, perplexity and KLD against the base model of every ladder file.  The base runs
    over the text once; each file's model follows it batch by batch.  All files are open
    (memory-mapped) at once, so RSS grows towards the sum of their sizes."""
    from ..startup import default_numerics, warm_kernels
    from .inspect import summarize
    from ..model import Model
    from .perplexity import perplexity_kld

    models = []
    for label, path in files:
        if os.path.samefile(path, base.path):
            models.append(base)           # the base against itself: KLD exactly 0
        else:
            models.append(Model(path, n_ctx=ctx, numerics=default_numerics()))
            warm_kernels(models[-1].matrix_types(), progress=log)

    def progress(i, n, stats):
        log(f"window {i}/{n}: mean KLD " + ", ".join(f"{label} {st.kld.mean():.3g}"
                                                      for (label, _), st in zip(files, stats)))

    all_stats = perplexity_kld(models, base, tok, text, ctx, max_windows=windows, progress=progress)
    rows = []
    for (label, path), model, stats in zip(files, models, all_stats):
        s, info = stats.summary(), summarize(model.gguf)
        rows.append({"type": label, "file": path, "bytes": info.file_bytes, "mib": info.file_bytes / 2**20,
                     "bpw": info.bpw, "n_params": info.n_params, "ppl": s["ppl"], "ppl_base": s["ppl_base"],
                     "kld_mean": s["kld_mean"], "kld_stderr": s["kld_stderr"], "kld_median": s["kld_median"],
                     "kld_p99": s["kld_p99"], "kld_p999": s["kld_p999"], "kld_max": s["kld_max"],
                     "same_top_p": s["same_top_p"], "rms_dp": s["rms_dp"], "tokens": s["tokens"]})
    return rows


# ---- output ----------------------------------------------------------------------------------

def format_table(rows: list) -> str:
    from .kld import _nats
    head = (f"{'type':<12} {'MiB':>8} {'bpw':>6} {'PPL':>10} {'ΔPPL':>8} {'KLD mean':>10} "
            f"{'KLD p99':>10} {'top-1':>7} {'tok/s':>7} {'RSS MiB':>8}")
    lines = [head]
    for r in rows:
        speed = (f"{r['tg_tok_s']:>7.1f} {r['peak_rss_mib']:>8.0f}" if r.get("tg_tok_s") is not None
                 else f"{'-':>7} {'-':>8}")
        lines.append(f"{r['type']:<12} {r['mib']:>8.2f} {r['bpw']:>6.3f} {r['ppl']:>10.4f} "
                     f"{r['ppl_delta_pct']:>+7.2f}% {_nats(r['kld_mean']):>10} {_nats(r['kld_p99']):>10} "
                     f"{r['same_top_p']:>6.2f}% {speed}")
    return "\n".join(lines)


def write_csv(path: Path, rows: list) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)


def plot(path: Path, rows: list, title: str) -> bool:
    """Perplexity (top) and mean KLD (bottom) against file size, points labelled by type.
    False when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")             # files only, no display needed
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return False
    rows = sorted(rows, key=lambda r: r["mib"])       # a line from small to large files
    x = [r["mib"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(2, 1, sharex=True, figsize=(7, 6.5))
    for ax, key, label in ((ax1, "ppl", "perplexity"), (ax2, "kld_mean", "mean KLD vs source (nats)")):
        y = [r[key] for r in rows]
        ax.plot(x, y, "o-", color="tab:blue" if key == "ppl" else "tab:red", alpha=0.8)
        for xi, yi, r in zip(x, y, rows):
            ax.annotate(r["type"], (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    # log scale: an F32 source is 4-16x the size of the rungs it is compared with
    ax2.set_xscale("log")
    ax2.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax2.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax2.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax2.set_xlabel("file size (MiB, log scale)")
    ax1.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---- the verb --------------------------------------------------------------------------------

def run(args):
    from .. import jit
    from ..startup import default_numerics, warm_kernels
    from ..gguf_file import GGUFFile
    from ..model import Model
    from ..registry import models_dir, resolve
    from ..tokenizer import Tokenizer

    types = parse_types(args.types)
    windows = _windows_arg(str(args.windows))
    if args.ctx <= 1:
        raise TinyLLMError(f"--ctx must be at least 2, got {args.ctx}")
    text_path = Path(args.file) if args.file else DEFAULT_TEXT
    try:
        text = text_path.read_text(encoding="utf-8")
    except OSError as e:
        raise TinyLLMError(f"cannot read {text_path}: {e.strerror}" +
                           ("" if args.file else " (pass --file TEXT)")) from None
    src = resolve(args.model, pull_if_missing=True, log=log)
    g = GGUFFile(src)
    src_type = weight_type(g)
    stem = Path(src).name[:-len(".gguf")] if src.endswith(".gguf") else Path(src).name
    out = Path(args.out) if args.out else models_dir() / "ladder" / stem
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        jit.set_threads(args.threads)
    notes = []
    if is_quantized(g):
        notes.append(f"note: the source {Path(src).name} is itself quantized ({src_type}): every rung "
                     f"re-quantizes already rounded weights, so errors compound; KLD is measured "
                     f"against that quantized source, not the original weights")
        log(notes[-1])
    elif (bits := dequantized_bits(g)) is not None:
        notes.append(f"note: the source's {src_type} weights sit on the grids of a quantized model "
                     f"({min(bits)}-{max(bits)} bits per block of 16 in its first matrices): it was "
                     f"made by dequantizing a quantized file, so every rung re-quantizes rounded "
                     f"weights and the ladder's order can be off (a format whose grid fits the "
                     f"old one loses less)")
        log(notes[-1])

    files = [(f"{src_type} (src)", src)] + [(t, quantized_file(src, out, t)) for t in types]

    base = Model(src, n_ctx=args.ctx, numerics=default_numerics())
    tok = Tokenizer.from_gguf(base.gguf)
    warm_kernels(sorted({t.type_name for t in g.tensors.values()}), progress=log)
    log(f"perplexity and KLD on {text_path.name}")
    rows = measure(files, base, tok, text, args.ctx, windows)
    for r in rows:
        if args.no_bench:
            r["tg_tok_s"] = r["pp_tok_s"] = r["peak_rss_mib"] = None
        else:
            log(f"{r['type']}: tinyllm bench")
            b = bench(r["file"], args.threads)
            r["tg_tok_s"], r["pp_tok_s"], r["peak_rss_mib"] = b["tg_tok_s"], b["pp_tok_s"], b["peak_rss_mib"]
    for r in rows:
        r["ppl_delta_pct"] = 100 * (r["ppl"] / rows[0]["ppl"] - 1)

    n_windows = rows[0]["tokens"] // (args.ctx - 1)
    header = (f"ladder of {src} ({src_type}): {text_path.name}, {n_windows} windows of {args.ctx} "
              f"({rows[0]['tokens']} tokens scored); KLD against the source")
    print(header)
    for n in notes:
        print(n)
    print(format_table(rows))
    write_csv(out / "ladder.csv", rows)
    (out / "ladder.json").write_text(json.dumps(
        {"source": src, "source_type": src_type, "source_quantized": is_quantized(g), "notes": notes,
         "text": str(text_path), "ctx": args.ctx, "windows": n_windows, "rows": rows}, indent=1))
    written = ["ladder.csv", "ladder.json"]
    if plot(out / "ladder.png", rows, f"{Path(src).name}: {n_windows} x {args.ctx} tokens of {text_path.name}"):
        written.append("ladder.png")
    else:
        print("no plot: matplotlib is not installed (pip install 'tinyllm[plot]' or pip install matplotlib)")
    print(f"wrote {', '.join(written)} to {out}")
