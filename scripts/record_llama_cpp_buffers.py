"""Record the buffer sizes llama.cpp logs for the real test models -> tests/fixtures/llama_cpp_buffers.json.

Ollama >= 0.30 reports the sum of llama.cpp's "... buffer size = X MiB" lines as
SIZE; tinyllm.tools.ollama.llama_server_buffers() predicts them from the header.  This
script loads each model with llama-cpp-python at a few settings and keeps the
lines, so tests/test_ollama.py can check the prediction against real llama.cpp
without needing llama-cpp-python itself.

Run with the reference venv (llama-cpp-python installed there, never in tinyllm):

    /work/refenv/venv/bin/python scripts/record_llama_cpp_buffers.py
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "llama_cpp_buffers.json"
MODELS = {
    "SmolLM2-135M-Instruct.Q4_1.gguf": [(2048, False, "f16"), (2048, True, "f16"),
                                        (8192, False, "f16"), (8192, True, "f16"),
                                        (8192, True, "q8_0"), (3000, True, "q4_0")],
    "gemma-3-270m-q4_k_m.gguf": [(2048, False, "f16"), (2048, True, "f16"),
                                 (8192, False, "f16"), (8192, True, "q8_0"), (1000, True, "f16")],
}
GGML_TYPE_ID = {"f16": 1, "q4_0": 2, "q8_0": 8}
BUFFER = re.compile(r"(\w+)\s+(model|KV|output|compute) buffer size =\s+([\d.]+) MiB")


def load_once(path: str, n_ctx: int, flash_attn: bool, kv_type: str) -> None:
    """Child process: load the model so llama.cpp prints its buffer lines to stderr."""
    from llama_cpp import Llama
    t = GGML_TYPE_ID[kv_type]
    # swa_full=False: llama-server's default (llama-cpp-python defaults to the full-size SWA cache).
    Llama(model_path=path, n_ctx=n_ctx, n_batch=512, n_ubatch=512, flash_attn=flash_attn,
          type_k=t, type_v=t, swa_full=False, verbose=True)


def record(path: str, n_ctx: int, flash_attn: bool, kv_type: str) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", path, str(n_ctx),
                        str(int(flash_attn)), kv_type], capture_output=True, text=True, check=True)
    buffers: dict[str, float] = {}
    for backend, kind, mib in BUFFER.findall(r.stderr):
        key = f"{backend} {kind}"
        buffers[key] = round(buffers.get(key, 0.0) + float(mib), 2)   # iswa logs two KV lines
    n_ctx_real = int(re.search(r"llama_context: n_ctx\s+= (\d+)", r.stderr).group(1))
    return {"n_ctx": n_ctx, "flash_attn": flash_attn, "kv_type": kv_type,
            "n_ctx_allocated": n_ctx_real, "buffers_mib": buffers}


def main() -> None:
    import llama_cpp
    runs = {}
    for name, settings in MODELS.items():
        path = str(ROOT / "models" / name)
        runs[name] = {"file_size": os.path.getsize(path),
                      "runs": [record(path, *s) for s in settings]}
        print(name, json.dumps(runs[name]["runs"], indent=1), file=sys.stderr)
    OUT.write_text(json.dumps({"llama_cpp_python": llama_cpp.__version__, "n_ubatch": 512,
                               "models": runs}, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        load_once(sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5])
    else:
        main()
