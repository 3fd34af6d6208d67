"""Peak RSS of tinyllm vs llama.cpp, fresh processes, on a grid of settings.

    python scripts/bench_memory.py [MODEL ...] [--ctx 2048 8192 32768] [--prompt 512]
        [--llama-python /path/to/venv/bin/python] [--threads 2]

For each model and context length, three settings: flash attention off + F16 KV,
flash attention on + F16 KV, flash attention on + Q8_0 KV. Each engine evaluates a
--prompt token prompt (one batch of up to 512 tokens) in a fresh process and
reports its peak RSS (VmHWM). tinyllm also reports its ledger's plan: the
resident total between forward calls (beside the RSS measured at the end) and the
peak during one (beside VmHWM), so both ledger errors are shown per point.
All figures are MiB (2^20 bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SETTINGS = [("off", "f16"), ("on", "f16"), ("on", "q8_0")]

LLAMA_MEM = r"""
import json, sys
import numpy as np
from llama_cpp import Llama
path, n_ctx, n_p, fa, kv, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "on", sys.argv[5], int(sys.argv[6])
ggml_type = {"f16": 1, "q8_0": 8}[kv]
llm = Llama(model_path=path, n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_threads=threads, flash_attn=fa,
            type_k=ggml_type, type_v=ggml_type, verbose=False)
rng = np.random.default_rng(0)
llm.eval(rng.integers(100, min(llm.n_vocab(), 30000), size=n_p).tolist())
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(json.dumps({"peak_rss_mib": int(hwm) / 1024}))
"""


def run_json(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--ctx", type=int, nargs="+", default=[2048, 8192, 32768])
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--llama-python", default=os.environ.get("LLAMA_PYTHON"))
    a = ap.parse_args()
    llama_py = a.llama_python or ("/work/refenv/venv/bin/python" if Path("/work/refenv/venv/bin/python").exists()
                                  else None)
    sys.path.insert(0, str(ROOT))
    from tinyllm.registry import resolve

    rows = []
    for name in a.models:
        path = resolve(name, pull_if_missing=True)
        # Fill numba's disk cache first: a cold compile holds LLVM's heaps and would be
        # measured as if it were the engine's working memory.
        for fa, kv in SETTINGS:
            run_json([sys.executable, "-m", "tinyllm", "bench", path, "-p", "16", "-n", "2", "--ctx", "256",
                      "--kv-type", kv, "--flash-attn", fa, "--n-batch", "512", "--json"])
        for n_ctx in a.ctx:
            for fa, kv in SETTINGS:
                ours = run_json([sys.executable, "-m", "tinyllm", "bench", path, "-p", str(a.prompt), "-n", "0",
                                 "--ctx", str(n_ctx), "--kv-type", kv, "--flash-attn", fa, "--n-batch", "512",
                                 "--threads", str(a.threads), "--json"])
                ref = run_json([llama_py, "-c", LLAMA_MEM, path, str(n_ctx), str(a.prompt), fa, kv,
                                str(a.threads)]) if llama_py else {}
                rows.append({"model": name, "n_ctx": n_ctx, "flash_attn": fa, "kv": kv, "tinyllm": ours,
                             "llama_cpp": ref})
                t, l = ours.get("peak_rss_mib"), ref.get("peak_rss_mib")
                ledger_err = (100 * (ours["planned_rss_mib"] / ours["rss_mib"] - 1)
                              if "planned_rss_mib" in ours else float("nan"))
                peak_err = (100 * (ours["planned_peak_mib"] / t - 1)
                            if "planned_peak_mib" in ours and t else float("nan"))
                ratio = f"{t / l:5.2f}" if t and l else "  -  "
                print(f"{name:14} ctx {n_ctx:6}  FA {fa:3} KV {kv:5}  tinyllm {t or float('nan'):7.0f}  "
                      f"llama.cpp {l or float('nan'):7.0f}  ratio {ratio}  ledger: resident {ledger_err:+5.1f} %"
                      f", peak {peak_err:+5.1f} %"
                      + (f"  [{ours.get('error') or ref.get('error')}]" if 'error' in ours or 'error' in ref else ""),
                      flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
