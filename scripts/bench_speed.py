"""tinyllm vs llama.cpp, back to back on the same file and thread count.

    python scripts/bench_speed.py [MODEL ...] [--threads 2] [-p 128] [-n 64] [--repeat 3]
        [--llama-python /path/to/venv/bin/python]
    python scripts/bench_speed.py --synthetic-1b [--types Q4_0,Q4_K,Q6_K,Q8_0] [--n-layer 16 --n-embd 2048]

Each engine runs in a fresh process: tinyllm through `tinyllm bench --json`,
llama.cpp through llama-cpp-python (in its own venv: pass --llama-python or set
LLAMA_PYTHON; the default is the interpreter running this script if it can
import llama_cpp). Prefill is a -p token prompt evaluated as one batch; decode
is -n greedy tokens one at a time. The best of --repeat runs is kept for each,
and the ratios tinyllm / llama.cpp are printed (higher is better for tinyllm).

--synthetic-1b benches, instead of MODELs, a random-weight ~1B llama in each of
--types (one row per type), built on first use by scripts/make_bench_1b.py into
models/bench/ (F16 ~1.8 GB + the quantized files; needs llama-cpp-python).
--n-layer / --n-embd shrink it for a quick check of the script.

--llama-no-repack runs llama.cpp as `--no-repack` does. By default llama.cpp on x86
(AVX2 and up) copies Q4_0, Q4_K and IQ4_NL weights at load into a layout that
interleaves 8 rows (its CPU_REPACK buffers: anonymous memory, hence its larger RSS
on those files); tinyllm, like llama.cpp with --no-repack, reads the file's layout
in place.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import make_bench_1b  # noqa: E402

# Runs inside the llama-cpp-python venv. Random ordinary tokens: cost does not depend on ids.
LLAMA_BENCH = r"""
import json, sys, time, resource
import numpy as np
import llama_cpp
from llama_cpp import Llama
path, threads, n_p, n_g, n_ctx = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
if sys.argv[6] == "1":      # llama.cpp's --no-repack: weights stay in the file map, as tinyllm's do
    import llama_cpp.llama_cpp as C
    _default = C.llama_model_default_params
    def _no_repack():
        p = _default()
        p.use_extra_bufts = False
        return p
    C.llama_model_default_params = _no_repack
llm = Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
            n_batch=max(n_p, 8), verbose=False)
rng = np.random.default_rng(0)
prompt = rng.integers(100, min(llm.n_vocab(), 30000), size=n_p).tolist()
def last_logits():
    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))
llm.eval(prompt[:8]); llm.reset()          # warm-up: touch the weights once
t0 = time.perf_counter(); llm.eval(prompt); t_pp = time.perf_counter() - t0
tok = int(np.argmax(last_logits()))
t0 = time.perf_counter()
for _ in range(n_g):
    llm.eval([tok]); tok = int(np.argmax(last_logits()))
t_tg = time.perf_counter() - t0
print(json.dumps({"pp_tok_s": n_p / t_pp, "tg_tok_s": n_g / t_tg,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def resolve_model(name: str) -> str:
    sys.path.insert(0, str(ROOT))
    from tinyllm.registry import resolve
    return resolve(name, pull_if_missing=True)


def run_json(cmd) -> dict:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(map(str, cmd))}\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def best(runs, key):
    return max(r[key] for r in runs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", default=["smollm2-135m"])
    ap.add_argument("--threads", "-t", type=int, default=2)
    ap.add_argument("-p", type=int, default=128)
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--llama-python", default=make_bench_1b.default_llama_python())
    ap.add_argument("--synthetic-1b", action="store_true", help="bench the synthetic ~1B model, one row per type")
    ap.add_argument("--types", default=",".join(make_bench_1b.TYPES), help="with --synthetic-1b")
    ap.add_argument("--n-layer", type=int, default=16, help="with --synthetic-1b")
    ap.add_argument("--n-embd", type=int, default=2048, help="with --synthetic-1b")
    ap.add_argument("--llama-no-repack", action="store_true",
                    help="llama.cpp without its load-time weight repacking (see above)")
    a = ap.parse_args()
    llama_py = a.llama_python

    if a.synthetic_1b:
        targets = {t: str(p) for t, p in make_bench_1b.build(make_bench_1b.parse_types(a.types), llama_py,
                                                              a.n_layer, a.n_embd).items()}
    else:
        targets = {name: resolve_model(name) for name in a.models}

    rows = []
    for name, path in targets.items():
        ours, ref = [], []
        for _ in range(a.repeat):
            ours.append(run_json([sys.executable, "-m", "tinyllm", "bench", path, "-p", str(a.p), "-n", str(a.n),
                                  "--threads", str(a.threads), "--ctx", str(a.ctx), "--json"]))
            if llama_py:
                ref.append(run_json([llama_py, "-c", LLAMA_BENCH, path, str(a.threads), str(a.p), str(a.n),
                                     str(a.ctx), "1" if a.llama_no_repack else "0"]))
        row = {"model": name, "threads": a.threads,
               "tinyllm_pp": best(ours, "pp_tok_s"), "tinyllm_tg": best(ours, "tg_tok_s"),
               "tinyllm_rss": min(r["peak_rss_mib"] for r in ours)}
        if ref:
            row.update({"llama_pp": best(ref, "pp_tok_s"), "llama_tg": best(ref, "tg_tok_s"),
                        "llama_rss": min(r["peak_rss_mib"] for r in ref)})
            row["pp_ratio"] = row["tinyllm_pp"] / row["llama_pp"]
            row["tg_ratio"] = row["tinyllm_tg"] / row["llama_tg"]
        rows.append(row)

    print(f"{'model':<28} {'thr':>3}  {'prefill tok/s':>22}  {'decode tok/s':>22}  {'peak RSS MiB':>16}")
    print(f"{'':<28} {'':>3}  {'tinyllm / llama.cpp':>22}  {'tinyllm / llama.cpp':>22}  {'tinyllm / llama':>16}")
    for r in rows:
        if "llama_pp" in r:
            print(f"{Path(r['model']).name:<28} {r['threads']:>3}  "
                  f"{r['tinyllm_pp']:7.1f} / {r['llama_pp']:7.1f} = {r['pp_ratio']:4.2f}  "
                  f"{r['tinyllm_tg']:7.1f} / {r['llama_tg']:7.1f} = {r['tg_ratio']:4.2f}  "
                  f"{r['tinyllm_rss']:6.0f} / {r['llama_rss']:6.0f}")
        else:
            print(f"{Path(r['model']).name:<28} {r['threads']:>3}  {r['tinyllm_pp']:7.1f} / (no llama.cpp)  "
                  f"{r['tinyllm_tg']:7.1f} / (no llama.cpp)  {r['tinyllm_rss']:6.0f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
