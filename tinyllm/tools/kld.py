"""How far a (quantized) model's predictions are from a base model's: KL divergence.

At every scored position t both models give a distribution over the whole
vocabulary; the KL divergence of the model from the base is

    KLD_t = KL(p_base || p) = sum_v p_base(v) * (log p_base(v) - log p(v))     (nats, >= 0)

0 when the two distributions are equal.  Perplexity only looks at the log-probability
of the one token that came next; KLD looks at the whole distribution, so it sees
quantization damage with far fewer tokens.  The summary follows llama.cpp's
`perplexity --kl-divergence`: mean KLD with its standard error, median, 99th and
99.9th percentiles, maximum, "same top p" (how often both models rank the same
token first), both perplexities, and RMS Δp (the change in the probability of
the token that actually came next).
"""

from __future__ import annotations

import numpy as np

from ..errors import TinyLLMError


def kl_divergence(logp_base: np.ndarray, logp: np.ndarray) -> np.ndarray:
    """KL(p_base || p) per row: log-probabilities (T, V) -> (T,) in nats (float64)."""
    logp_base = np.asarray(logp_base, np.float64)
    return np.sum(np.exp(logp_base) * (logp_base - logp), axis=-1)


def check_same_vocabulary(g, g_base) -> None:
    """Both GGUF files must index the same tokens, else comparing distributions means nothing."""
    toks, toks_base = g.get("tokenizer.ggml.tokens") or [], g_base.get("tokenizer.ggml.tokens") or []
    if len(toks) != len(toks_base):
        raise TinyLLMError(f"{g.path} and {g_base.path} have different vocabularies "
                           f"({len(toks):,} and {len(toks_base):,} tokens): KL divergence needs the same one")
    if toks != toks_base:
        i = next(i for i, (a, b) in enumerate(zip(toks, toks_base)) if a != b)
        raise TinyLLMError(f"{g.path} and {g_base.path} have different vocabularies "
                           f"(token {i} is {toks[i]!r} in one, {toks_base[i]!r} in the other)")


class KLDStats:
    """Accumulates per-token numbers batch by batch; nothing vocabulary-sized is kept."""

    def __init__(self):
        self._kld, self._nll, self._nll_base, self._dp, self._same_top = [], [], [], [], []

    def add(self, logp_base: np.ndarray, logp: np.ndarray, targets) -> np.ndarray:
        """One batch: log-probabilities (T, V) of both models and the T tokens that came next.
        Returns this batch's KLD values (T,)."""
        targets = np.asarray(targets, np.int64)
        rows = np.arange(len(targets))
        kld = kl_divergence(logp_base, logp)
        lp, lp_base = logp[rows, targets], logp_base[rows, targets]
        self._kld.append(kld)
        self._nll.append(-lp)
        self._nll_base.append(-lp_base)
        self._dp.append(np.exp(lp) - np.exp(lp_base))
        self._same_top.append(np.argmax(logp, axis=-1) == np.argmax(logp_base, axis=-1))
        return kld

    @property
    def n(self) -> int:
        return sum(len(k) for k in self._kld)

    def _all(self, name):
        return np.concatenate(getattr(self, name)) if getattr(self, name) else np.zeros(0)

    @property
    def kld(self) -> np.ndarray:
        return self._all("_kld")

    def summary(self) -> dict:
        n = self.n
        if n == 0:
            raise ValueError("no tokens scored")
        kld, nll, nll_base = self._all("_kld"), self._all("_nll"), self._all("_nll_base")
        dp, same = self._all("_dp"), self._all("_same_top").astype(np.float64)
        # standard error of a mean: sample standard deviation / sqrt(n)
        sem = (lambda x: float(np.std(x, ddof=1) / np.sqrt(n)) if n > 1 else 0.0)
        p_same = float(same.mean())
        ln_ratio = nll - nll_base           # per token: ln p_base(t) - ln p(t)
        return {
            "tokens": n,
            "ppl": float(np.exp(nll.mean())),
            "ppl_base": float(np.exp(nll_base.mean())),
            "ppl_ratio": float(np.exp(ln_ratio.mean())),
            "ln_ppl_ratio": float(ln_ratio.mean()), "ln_ppl_ratio_stderr": sem(ln_ratio),
            "kld_mean": float(kld.mean()), "kld_stderr": sem(kld),
            "kld_median": float(np.median(kld)),
            "kld_p99": float(np.percentile(kld, 99.0)),
            "kld_p999": float(np.percentile(kld, 99.9)),
            "kld_max": float(kld.max()),
            "same_top_p": 100 * p_same,
            "same_top_p_stderr": 100 * float(np.sqrt(p_same * (1 - p_same) / max(1, n - 1))),
            "rms_dp": 100 * float(np.sqrt(np.mean(dp ** 2))),
        }


def _nats(x: float) -> str:
    """Six decimals, or three significant digits for the tiny KLDs of near-identical models."""
    return f"{x:.6f}" if x == 0 or abs(x) >= 1e-3 else f"{x:.2e}"


def format_summary(s: dict) -> str:
    return "\n".join([
        f"PPL(model)   {s['ppl']:.4f}",
        f"PPL(base)    {s['ppl_base']:.4f}",
        f"PPL ratio    {s['ppl_ratio']:.6f}   (mean ln ratio {_nats(s['ln_ppl_ratio'])} "
        f"± {_nats(s['ln_ppl_ratio_stderr'])})",
        f"mean KLD     {_nats(s['kld_mean'])} ± {_nats(s['kld_stderr'])}",
        f"median KLD   {_nats(s['kld_median'])}",
        f"99.0% KLD    {_nats(s['kld_p99'])}",
        f"99.9% KLD    {_nats(s['kld_p999'])}",
        f"max KLD      {_nats(s['kld_max'])}",
        f"same top p   {s['same_top_p']:.3f} ± {s['same_top_p_stderr']:.3f} %",
        f"RMS Δp       {s['rms_dp']:.3f} %",
    ])
