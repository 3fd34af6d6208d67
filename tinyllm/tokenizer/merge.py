"""The loop at the heart of both BPE flavours: keep merging the best adjacent pair.

A word starts as a list of symbols (characters).  Some adjacent pairs may be
merged into one symbol; each mergeable pair has a priority:

    byte-level BPE (gpt2)   priority = -rank of the pair in `tokenizer.ggml.merges`
    SentencePiece (llama)   priority = score of the token the pair spells

Repeatedly the pair with the highest priority merges, the leftmost one on ties,
until no adjacent pair is mergeable.  That tie rule is what llama.cpp does (its
priority queue orders by (priority, left index)), and matters for runs like
"aaaa" where several equal pairs overlap.

A heap keeps this O(n log n), which matters for SentencePiece: it has no
pre-tokenizer, so one "word" is a whole paragraph.  Entries go stale when one of
their two symbols merges with a third; they are recognised by the pair's length
no longer adding up and skipped, as llama.cpp does.
"""

from __future__ import annotations

import heapq
from typing import Callable, Optional


def merge_pairs(word: str, priority: Callable[[str, str], Optional[float]]) -> list[str]:
    """Split `word` into the symbols left after greedy best-pair merging.

    priority(left, right) -> how good it is to merge the adjacent symbols `left`
    and `right` into one, or None if they cannot merge.  Symbols start as
    characters.
    """
    n = len(word)
    if n < 2:
        return [word] if word else []
    # Symbol i covers word[i:i + size[i]]: a merge grows the left symbol and
    # empties the right one (size 0).  prev/nxt link the live symbols (-1 = none).
    size = [1] * n
    prev = list(range(-1, n - 1))
    nxt = list(range(1, n + 1))
    nxt[-1] = -1

    heap: list[tuple[float, int, int, int]] = []  # (-priority, left, right, merged size)

    def push(left: int, right: int) -> None:
        if left < 0 or right < 0:
            return
        p = priority(word[left:left + size[left]], word[right:right + size[right]])
        if p is not None:
            heapq.heappush(heap, (-p, left, right, size[left] + size[right]))

    for i in range(n - 1):
        push(i, i + 1)

    while heap:
        _, left, right, pair_len = heapq.heappop(heap)
        if size[left] == 0 or size[right] == 0 or size[left] + size[right] != pair_len:
            continue  # stale: one side already merged with something else
        size[left] = pair_len  # the right symbol joins the left one
        size[right] = 0
        nxt[left] = nxt[right]
        if nxt[right] >= 0:
            prev[nxt[right]] = left
        push(prev[left], left)
        push(left, nxt[left])

    out, i = [], 0
    while i >= 0:
        out.append(word[i:i + size[i]])
        i = nxt[i]
    return out
