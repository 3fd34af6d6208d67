"""Perplexity: exp of the mean negative log-likelihood the model gives a text.

    ppl = exp( -1/N  sum_j log p(t_j | t_<j) )

The text is cut into non-overlapping windows of ctx tokens, each evaluated from
an empty KV cache; every token of a window after its first is scored.  When the
vocabulary adds BOS, a window's first token is replaced by BOS, as llama.cpp's
perplexity tool does, so a window starts the way the model saw text in training.

perplexity_kld() runs a base model beside the model over the same windows and
measures how far apart their predicted distributions are (see kld.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import TinyLLMError


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


def _windows(tokenizer, text: str, ctx: int, model_n_ctx: int, max_windows: int | None):
    """The text's tokens cut into non-overlapping windows of ctx: a list of token lists."""
    if ctx > model_n_ctx:
        raise TinyLLMError(f"perplexity window {ctx} exceeds the context {model_n_ctx}; pass --ctx {ctx}")
    tokens = tokenizer.encode(text, add_bos=False)
    n_windows = len(tokens) // ctx
    if max_windows:
        n_windows = min(n_windows, max_windows)
    if n_windows == 0:
        raise TinyLLMError(f"text has {len(tokens)} tokens, fewer than one window of {ctx}")
    windows = []
    for w in range(n_windows):
        window = list(tokens[w * ctx:(w + 1) * ctx])
        if tokenizer.add_bos:
            window[0] = tokenizer.bos_id
        windows.append(window)
    return windows


def _batch_size(n_vocab: int, n_models: int = 1) -> int:
    """Tokens per forward pass: logits for a batch are [batch, V] float32 (and float64
    log-probabilities); keep them near 64 MiB per model even for Gemma's 262k vocabulary."""
    return max(16, min(256, 2**24 // (n_vocab * n_models)))


def _window_batches(model, window, batch):
    """Run the model over one window from an empty cache, batch by batch.
    Yields (s, targets, log p (b, V)); row i of a batch predicts targets[i]."""
    model.reset()
    for s in range(0, len(window), batch):
        targets = window[s + 1:s + batch + 1]
        if not targets:
            break
        yield s, targets, log_softmax(model.forward(window[s:s + batch], s, all_logits=True)[:len(targets)])


def perplexity(model, tokenizer, text: str, ctx: int = 512, progress=None,
               max_windows: int | None = None) -> PerplexityResult:
    windows = _windows(tokenizer, text, ctx, model.n_ctx, max_windows)
    batch = _batch_size(model.cfg.n_vocab)
    total, n_scored, per_window = 0.0, 0, []
    for w, window in enumerate(windows):
        nll = 0.0
        for _, targets, logp in _window_batches(model, window, batch):
            nll -= float(logp[np.arange(len(targets)), targets].sum())
        per_window.append(nll)
        total += nll
        n_scored += ctx - 1
        if progress:
            progress(w + 1, len(windows), float(np.exp(total / n_scored)))
    model.reset()
    return PerplexityResult(float(np.exp(total / n_scored)), n_scored, len(windows), ctx, per_window)


def perplexity_kld(model, base, tokenizer, text: str, ctx: int = 512, progress=None,
                   max_windows: int | None = None):
    """Perplexity of both models and KL(p_base || p_model) at every scored token, over the
    same windows as perplexity().  Returns a kld.KLDStats (its .summary() has every number).
    `model` may be a list of models: the base then runs once for all of them (the ladder),
    and a list of KLDStats comes back.  The models run batch by batch behind the base, so
    only two batches of full-vocabulary log-probabilities are ever held."""
    from .kld import KLDStats, check_same_vocabulary
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    for m in models:
        check_same_vocabulary(m.gguf, base.gguf)
    windows = _windows(tokenizer, text, ctx, min(m.n_ctx for m in models + [base]), max_windows)
    batch = _batch_size(base.cfg.n_vocab, 2)
    stats = [KLDStats() for _ in models]
    for w, window in enumerate(windows):
        for m in models:
            m.reset()
        for s, targets, logp_base in _window_batches(base, window, batch):
            for m, st in zip(models, stats):
                # the base against itself needs no second pass: its KLD is exactly 0
                logp = logp_base if m is base else log_softmax(
                    m.forward(window[s:s + batch], s, all_logits=True)[:len(targets)])
                st.add(logp_base, logp, targets)
        if progress:
            progress(w + 1, len(windows), stats if isinstance(model, (list, tuple)) else stats[0])
    for m in models + [base]:
        m.reset()
    return stats if isinstance(model, (list, tuple)) else stats[0]
