"""Perplexity: exp of the mean negative log-likelihood the model gives a text.

    ppl = exp( -1/N  sum_j log p(t_j | t_<j) )

The text is cut into non-overlapping windows of ctx tokens, each evaluated from
an empty KV cache; every token of a window after its first is scored.  When the
vocabulary adds BOS, a window's first token is replaced by BOS, as llama.cpp's
perplexity tool does, so a window starts the way the model saw text in training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import TinyLLMError


@dataclass
class PerplexityResult:
    ppl: float
    n_scored: int
    n_windows: int
    ctx: int
    nll_per_window: list


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log p = z - logsumexp(z), in float64 so long sums of small terms stay exact."""
    z = logits.astype(np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def perplexity(model, tokenizer, text: str, ctx: int = 512, progress=None,
               max_windows: int | None = None) -> PerplexityResult:
    if ctx > model.n_ctx:
        raise TinyLLMError(f"perplexity window {ctx} exceeds the context {model.n_ctx}; pass --ctx {ctx}")
    tokens = tokenizer.encode(text, add_bos=False)
    n_windows = len(tokens) // ctx
    if max_windows:
        n_windows = min(n_windows, max_windows)
    if n_windows == 0:
        raise TinyLLMError(f"text has {len(tokens)} tokens, fewer than one window of {ctx}")
    # Logits for a batch are [batch, V] float32; keep them near 64 MiB even for
    # Gemma's 262k vocabulary.
    batch = max(16, min(256, 2**24 // model.cfg.n_vocab))
    total, n_scored, per_window = 0.0, 0, []
    for w in range(n_windows):
        window = list(tokens[w * ctx:(w + 1) * ctx])
        if tokenizer.add_bos:
            window[0] = tokenizer.bos_id
        model.reset()
        nll = 0.0
        for s in range(0, ctx, batch):
            # logits of a batch: [b, V]; row i predicts window[s + i + 1]
            logits = model.forward(window[s:s + batch], s, all_logits=True)
            targets = window[s + 1:s + batch + 1]
            logp = log_softmax(logits[:len(targets)])
            nll -= float(logp[np.arange(len(targets)), targets].sum())
        per_window.append(nll)
        total += nll
        n_scored += ctx - 1
        if progress:
            progress(w + 1, n_windows, float(np.exp(total / n_scored)))
    model.reset()
    return PerplexityResult(float(np.exp(total / n_scored)), n_scored, n_windows, ctx, per_window)
