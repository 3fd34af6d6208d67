"""What of `tinyllm run MODEL -p PROMPT -n N --temp 0` another machine must reproduce.

    python .ci/clear_prefix.py MODEL PROMPT N > clear.txt

Prints what `tinyllm run` prints (the prompt, then the greedy continuation) but only up to
the first close step: a step whose top-1/top-2 logit gap on this machine is below MARGIN.
There the other machine's kernels, which round the same integers but add the float block
sums in another order (NEON's 4 lanes against AVX-512's 16), may pick the other token, as
llama.cpp's own batched and one-token paths do; after it the two texts are not comparable.
On stderr: how many steps are clear and the gap of the first close one.
"""

import sys

import numpy as np

from tinyllm.generate import Session
from tinyllm.startup import open_model

MARGIN = 0.5          # logits; the agreement tests' threshold (tests/test_agreement.py)
MIN_CLEAR = 4         # a check of fewer steps says little: choose another prompt


def main(model_name: str, prompt: str, n_predict: int) -> int:
    model, tok = open_model(model_name)
    gaps = []

    def greedy(logits, _history):          # what run's temperature-0 sampler picks, and its gap
        top2 = np.partition(logits, -2)[-2:]
        gaps.append(float(top2[1] - top2[0]))
        return int(np.argmax(logits))

    text = prompt
    for piece in Session(model, tok).generate(tok.encode(prompt), greedy, n_predict=n_predict):
        if min(gaps) < MARGIN:              # the piece of the first close step and all after it
            break
        text += piece
    close = next((i for i, g in enumerate(gaps) if g < MARGIN), None)
    clear = len(gaps) if close is None else close
    where = "none" if close is None else f"step {close + 1}, gap {gaps[close]:.3f} logits"
    print(f"clear steps: {clear} of {n_predict}; first close step: {where}", file=sys.stderr)
    sys.stdout.write(text)
    if clear < MIN_CLEAR:
        print(f"only {clear} clear steps: choose a prompt without an early near-tie", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
