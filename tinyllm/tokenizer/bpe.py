"""Byte-level BPE (`tokenizer.ggml.model == "gpt2"`): GPT-2, SmolLM, Llama 3, Qwen2...

    text --pre-tokenizer regexes--> words --UTF-8 bytes, one printable char per byte-->
         --merge pairs by rank from tokenizer.ggml.merges--> tokens --> ids

Pre-tokenizer.  A regex cuts the text into words (letters with one leading space,
runs of digits, punctuation, whitespace) so merges never cross word boundaries.
Which regexes depends on `tokenizer.ggml.pre`; each one is applied in turn to the
pieces the previous one left, and text between matches stays a piece of its own.
The lists below are llama.cpp's (llama-vocab.cpp), the `(?i:...)` contractions
spelled out as `'[sS]` the way llama.cpp rewrites them.  Character classes
(\\p{L} letter, \\p{N} number, \\s whitespace) need the `regex` package; llama.cpp
generates its own Unicode tables with that same package.

Byte-level alphabet.  Each of the 256 byte values is shown as one printable
character: printable Latin-1 bytes stand for themselves, the other 68 (control
characters, space, ...) are moved to U+0100 and up, so a space is "Ġ" and a
newline "Ċ".  Vocabulary and merges are written in that alphabet.
"""

from __future__ import annotations

from typing import Optional

import regex

from ..errors import TinyLLMError
from .merge import merge_pairs
from .vocab import Vocab


def _byte_to_char() -> list[str]:
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table, shifted = [""] * 256, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(0x100 + shifted)
            shifted += 1
    return table


BYTE_TO_CHAR = _byte_to_char()
# str.translate tables: bytes-as-latin-1 text <-> byte-level text
_ENCODE_TABLE = {b: c for b, c in enumerate(BYTE_TO_CHAR)}
_DECODE_TABLE = {ord(c): b for b, c in enumerate(BYTE_TO_CHAR)}

_CONTRACTIONS = r"'s|'t|'re|'ve|'m|'ll|'d"
_CONTRACTIONS_ANY_CASE = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
GPT2 = _CONTRACTIONS + r"| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3 = (_CONTRACTIONS_ANY_CASE + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")  # single digits

# tokenizer.ggml.pre -> regexes applied in turn; an isolated \p{N} first
# splits every digit on its own.
PRE_TOKENIZERS = {
    "gpt-2": [GPT2],
    "smollm": [r"\p{N}", GPT2],
    "starcoder": [r"\p{N}", GPT2],
    "llama-bpe": [LLAMA3],
    "llama3": [LLAMA3],
    "llama-v3": [LLAMA3],
    "qwen2": [QWEN2],
    "deepseek-r1-qwen": [QWEN2],
}
# Pre-tokenizers whose tokenizer.json sets ignore_merges: a word that is
# already a token is used whole (matters for rare words with no merge path).
IGNORE_MERGES = {"llama-bpe", "llama3", "llama-v3"}
# ...and whose llama.cpp default is to add BOS when the GGUF does not say.
ADD_BOS_BY_DEFAULT = {"llama-bpe", "llama3", "llama-v3"}


def pre_tokenize(text: str, patterns: list) -> list[str]:
    """Cut text into words: each regex splits the pieces the previous one left."""
    pieces = [text]
    for pattern in patterns:
        out = []
        for piece in pieces:
            pos = 0
            for m in pattern.finditer(piece):
                if m.start() > pos:
                    out.append(piece[pos:m.start()])  # unmatched text stays a word
                out.append(m.group())
                pos = m.end()
            if pos < len(piece):
                out.append(piece[pos:])
        pieces = out
    return pieces


def to_byte_level(word: str) -> str:
    """UTF-8 bytes of `word`, one printable character per byte."""
    return word.encode("utf-8").decode("latin-1").translate(_ENCODE_TABLE)


def from_byte_level(token: str) -> bytes:
    """Inverse of to_byte_level: the bytes a token stands for."""
    try:
        return token.translate(_DECODE_TABLE).encode("latin-1")
    except UnicodeEncodeError:  # a character outside the byte alphabet: keep it as UTF-8
        return b"".join(bytes([_DECODE_TABLE[ord(c)]]) if ord(c) in _DECODE_TABLE
                        else c.encode("utf-8") for c in token)


class BytePairEncoding:
    """Text without special tokens -> ids, and id -> bytes, for a gpt2-type vocab."""

    def __init__(self, vocab: Vocab, merges: list[str], pre: str):
        if pre not in PRE_TOKENIZERS:
            raise TinyLLMError(
                f"unsupported BPE pre-tokenizer tokenizer.ggml.pre={pre!r}; tinyllm supports: "
                + ", ".join(sorted(PRE_TOKENIZERS)))
        self.vocab = vocab
        self.patterns = [regex.compile(p) for p in PRE_TOKENIZERS[pre]]
        self.ignore_merges = pre in IGNORE_MERGES
        # "Ġ t" -> rank 0: a lower rank merges earlier; a pair is looked up as
        # "left right" (byte-level symbols never contain a raw space).  Filled
        # back to front so that, as in llama.cpp, the first listing of a pair wins.
        self.ranks: dict[str, int] = dict(zip(reversed(merges), range(len(merges) - 1, -1, -1)))
        self._cache: dict[str, list[int]] = {}

    def _pair_priority(self, left: str, right: str) -> Optional[float]:
        rank = self.ranks.get(left + " " + right)
        return None if rank is None else -rank

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for word in pre_tokenize(text, self.patterns):
            cached = self._cache.get(word)
            if cached is None:
                cached = self._encode_word(word)
                if len(self._cache) > 50_000:  # bound memory on endless input
                    self._cache.clear()
                self._cache[word] = cached
            ids.extend(cached)
        return ids

    def _encode_word(self, word: str) -> list[int]:
        token_to_id = self.vocab.token_to_id
        chars = to_byte_level(word)
        if self.ignore_merges and chars in token_to_id:
            return [token_to_id[chars]]
        ids = []
        for symbol in merge_pairs(chars, self._pair_priority):
            tid = token_to_id.get(symbol)
            if tid is not None:
                ids.append(tid)
            else:
                # A merge produced a string with no token (a broken vocab):
                # llama.cpp falls back to one-byte tokens and drops what has none.
                ids.extend(token_to_id[c] for c in symbol if c < "\x80" and c in token_to_id)
        return ids

    def piece(self, tid: int) -> bytes:
        """The bytes token `tid` stands for: byte-level text decodes back to bytes."""
        return self.vocab.piece(tid, from_byte_level)
