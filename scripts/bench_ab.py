"""Decode speed of two versions of tinyllm, alternating in one process.

    python scripts/bench_ab.py REV [MODEL] [--rounds 40] [--threads 2] [-p 128] [-n 64]

On a noisy VM two processes of the *same* code read up to ~20 % apart, so comparing
bench runs of two commits cannot show a few per cent.  This loads REV (any git revision,
exported with `git archive` as the package `tinyllm_a`) beside the working tree's
tinyllm, opens MODEL in both (the weights are one shared file map) and times -n decode
steps after a -p token prompt, A then B, B then A, for --rounds rounds.  It prints both
medians and the median of the paired ratios B/A (> 1: the working tree is faster).
Pass REV = HEAD with an unchanged tree for an A/A check of the method itself.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def export(rev: str, dest: Path) -> None:
    """REV's tinyllm/ as dest/tinyllm_a (its imports are relative), models/ shared."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "tinyllm"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    (dest / "tinyllm").rename(dest / "tinyllm_a")
    os.symlink(ROOT / "models", dest / "models")      # the registry sits beside the package


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rev")
    ap.add_argument("model", nargs="?", default="smollm2-135m")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-p", type=int, default=128)
    ap.add_argument("-n", type=int, default=64)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tinyllm-ab-"))
    try:
        export(args.rev, tmp)
        sys.path[:0] = [str(tmp), str(ROOT)]
        from tinyllm_a.startup import open_model as open_a

        from tinyllm.startup import open_model as open_b
        models = {"A": open_a(args.model, n_ctx=2048, threads=args.threads)[0],
                  "B": open_b(args.model, n_ctx=2048, threads=args.threads)[0]}
    finally:                                           # the kernels are loaded: the copy can go
        shutil.rmtree(tmp)
    prompt = np.random.default_rng(0).integers(100, 30000, size=args.p).tolist()

    def decode_tok_s(m) -> float:
        m.reset()
        m.forward(prompt, 0)
        t0 = time.perf_counter()
        for i in range(args.n):
            m.forward([5], args.p + i)
        return args.n / (time.perf_counter() - t0)

    for m in models.values():                          # first touch of the weights, both
        decode_tok_s(m)
    runs = {"A": [], "B": []}
    for r in range(args.rounds):
        for name in ("AB" if r % 2 == 0 else "BA"):
            runs[name].append(decode_tok_s(models[name]))
    ratios = [b / a for a, b in zip(runs["A"], runs["B"])]
    med = statistics.median
    print(f"{args.model}, {args.threads} threads, {args.rounds} rounds of {args.n} tokens: "
          f"A ({args.rev}) median {med(runs['A']):.1f} tok/s, B (working tree) median "
          f"{med(runs['B']):.1f} tok/s, B/A median {med(ratios):.3f} "
          f"(quartiles {np.percentile(ratios, 25):.3f} .. {np.percentile(ratios, 75):.3f})")


if __name__ == "__main__":
    main()
