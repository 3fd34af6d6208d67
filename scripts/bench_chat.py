"""Decode speed of `tinyllm chat` after a long history, against `tinyllm bench` at the same
number of cached tokens (issue 13: within 15 %).

    python scripts/bench_chat.py [MODEL] [--history 2000] [-n 64] [--threads 2] [--repeat 2]

bench: `tinyllm bench MODEL -p H -n N` -- a prompt of H tokens, then N decode steps.
chat:  `tinyllm chat MODEL -n N` reading one message on stdin: about H tokens of the Alice
text of tests/fixtures/text followed by "Go on with the story."; its "[mem] reply N tok
R tok/s" line is the chat figure (decode steps from H to H + N cached tokens).  The chat's rate counts every reply token over the time from the end of the
prompt to the last token, so it includes sampling, detokenizing and printing -- what the
person at the keyboard waits for.  Both run greedy, in fresh processes, best of --repeat.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINYLLM = [sys.executable, "-m", "tinyllm"]
TEXT = ROOT / "tests" / "fixtures" / "text" / "alice_ch1-3.txt"


def history_text(model: str, n_tokens: int) -> str:
    """About n_tokens tokens of the Alice text (cut by the model's own tokenizer), on one line."""
    from tinyllm.gguf_file import GGUFFile
    from tinyllm.registry import resolve
    from tinyllm.tokenizer import Tokenizer
    tok = Tokenizer.from_gguf(GGUFFile(resolve(model, pull_if_missing=False)))
    ids = tok.encode(" ".join(TEXT.read_text().split()))[:n_tokens]
    return tok.decode(ids)


def bench(model, history, n, threads, ctx) -> float:
    out = subprocess.run(TINYLLM + ["bench", model, "-p", str(history), "-n", str(n), "--ctx", str(ctx),
                                    "--threads", str(threads), "--json"],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])["tg_tok_s"]


def chat(model, text, n, threads, ctx) -> tuple[float, int, int]:
    r = subprocess.run(TINYLLM + ["chat", model, "--ctx", str(ctx), "--threads", str(threads), "--temp", "0",
                                  "-n", str(n)], input=f"{text} Go on with the story.\n",
                       capture_output=True, text=True, check=True, cwd=ROOT)
    replies = re.findall(r"\[mem\] reply (\d+) tok ([\d.]+) tok/s .*KV (\d+)/", r.stderr)
    if len(replies) != 1:
        raise SystemExit(f"unexpected chat output:\n{r.stderr[-2000:]}")
    n_gen, rate, kv = replies[-1]
    return float(rate), int(n_gen), int(kv)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="smollm2-135m")
    ap.add_argument("--history", type=int, default=2000)
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("--threads", "-t", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    ctx = args.history + args.n + 256
    text = history_text(args.model, args.history)
    b, c = [], []
    for _ in range(args.repeat):                   # alternate, A/B/A/B: the machine drifts
        b.append(bench(args.model, args.history, args.n, args.threads, ctx))
        c.append(chat(args.model, text, args.n, args.threads, ctx))
    best = max(c)
    print(f"{args.model}: decode after ~{args.history} tokens, {args.threads} threads: "
          f"bench {max(b):.1f} tok/s, chat {best[0]:.1f} tok/s ({best[1]} tokens, KV {best[2]} cells "
          f"at the end) = {best[0] / max(b):.2f}x  [runs: bench {', '.join(f'{x:.1f}' for x in b)}; "
          f"chat {', '.join(f'{x[0]:.1f}' for x in c)}]")


if __name__ == "__main__":
    main()
