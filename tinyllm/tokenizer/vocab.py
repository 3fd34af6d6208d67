"""The token table of a GGUF file and the special-token rules llama.cpp applies to it.

GGUF stores the vocabulary as parallel arrays:

    tokenizer.ggml.tokens      token text, index = token id
    tokenizer.ggml.token_type  NORMAL=1 UNKNOWN=2 CONTROL=3 USER_DEFINED=4 UNUSED=5 BYTE=6
    tokenizer.ggml.scores      (SentencePiece only) merge priority of each token
    tokenizer.ggml.*_token_id  bos, eos, eot, ...

Which tokens end generation is not stored anywhere: llama.cpp decides it from the
token texts (<|im_end|>, <end_of_turn>, <|eot_id|>, ...), and promotes those
tokens to CONTROL.  We follow the same rules so that generation stops where
llama.cpp's does and special tokens render the same way.
"""

from __future__ import annotations

import numpy as np


class TokenAttr:
    """Per-token attribute bits (llama.cpp's llama_token_attr)."""
    UNDEFINED = 0
    UNKNOWN = 1 << 0
    UNUSED = 1 << 1
    NORMAL = 1 << 2
    CONTROL = 1 << 3
    USER_DEFINED = 1 << 4
    BYTE = 1 << 5


# tokenizer.ggml.token_type value -> attribute
_TYPE_TO_ATTR = np.array([TokenAttr.UNDEFINED, TokenAttr.NORMAL, TokenAttr.UNKNOWN,
                          TokenAttr.CONTROL, TokenAttr.USER_DEFINED, TokenAttr.UNUSED,
                          TokenAttr.BYTE], dtype=np.uint16)

# Special tokens matched in raw text before any BPE/SentencePiece work.
SPECIAL = TokenAttr.CONTROL | TokenAttr.USER_DEFINED | TokenAttr.UNKNOWN
# ...of which these are only matched (and only rendered) on request.
HIDDEN = TokenAttr.CONTROL | TokenAttr.UNKNOWN

# Token texts llama.cpp recognises, when the GGUF does not give the id.
# (llama-vocab.cpp, "auto-detect special tokens by text")
EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
             "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>",
             "<end_of_utterance>")
EOM_TEXTS = ("<|eom_id|>",)
FIM_TEXTS = {
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>",
                "▁<PRE>", "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>",
                "▁<SUF>", "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>",
                "▁<MID>", "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
# Any of these texts ends generation.
EOG_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>",
             "<|calls|>", "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>",
             "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>", "<eos>",
             "<turn|>", "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~[")

# GGUF key suffix -> slot, in llama.cpp's order (the deprecated keys come last and win).
_ID_KEYS = (("bos_token_id", "bos"), ("eos_token_id", "eos"), ("eot_token_id", "eot"),
            ("eom_token_id", "eom"), ("unknown_token_id", "unk"), ("seperator_token_id", "sep"),
            ("padding_token_id", "pad"), ("mask_token_id", "mask"),
            ("fim_pre_token_id", "fim_pre"), ("fim_suf_token_id", "fim_suf"),
            ("fim_mid_token_id", "fim_mid"), ("fim_pad_token_id", "fim_pad"),
            ("fim_rep_token_id", "fim_rep"), ("fim_sep_token_id", "fim_sep"),
            ("prefix_token_id", "fim_pre"), ("suffix_token_id", "fim_suf"),
            ("middle_token_id", "fim_mid"))


class Vocab:
    """Token texts, attributes, special ids and end-of-generation set."""

    def __init__(self, metadata: dict, default_ids: dict):
        tokens = metadata["tokenizer.ggml.tokens"]
        n = len(tokens)
        self.token_to_id: dict[str, int] = dict(zip(tokens, range(n)))  # duplicates: last wins
        if "" in self.token_to_id:  # llama.cpp names empty tokens instead
            tokens = [t or f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
            self.token_to_id = dict(zip(tokens, range(n)))
        self.tokens: list[str] = tokens
        types = metadata.get("tokenizer.ggml.token_type")
        if types is None:
            self.attr = np.full(n, TokenAttr.NORMAL, dtype=np.uint16)
        else:
            types = np.asarray(types[:n], dtype=np.int64)
            self.attr = _TYPE_TO_ATTR[np.where((types >= 0) & (types < 7), types, 0)]

        # special ids: the model type's defaults, then whatever the file says
        self.ids = {slot: None for _, slot in _ID_KEYS}
        self.ids.update({k: (v if v is not None and 0 <= v < n else None)
                         for k, v in default_ids.items()})
        for key, slot in _ID_KEYS:
            v = metadata.get("tokenizer.ggml." + key)
            if v is not None and 0 <= int(v) < n:
                self.ids[slot] = int(v)

        self._detect_special_tokens()
        self.eog_ids = self._end_of_generation_ids()

        # Special tokens longest first: that is the order llama.cpp carves them
        # out of the text, so "<end_of_turn>" wins over a shorter "<end".
        special = np.flatnonzero(self.attr & SPECIAL)
        lengths = [len(tokens[i].encode("utf-8")) for i in special]
        order = sorted(range(len(special)), key=lambda k: -lengths[k])
        self.special_ids = [int(special[k]) for k in order]
        self.user_defined_ids = [i for i in self.special_ids if not int(self.attr[i]) & HIDDEN]

    def __len__(self) -> int:
        return len(self.tokens)

    def find(self, *texts: str) -> list[int]:
        return [self.token_to_id[t] for t in texts if t in self.token_to_id]

    def _promote_to_control(self, tid: int) -> None:
        # The texts above are control tokens even if the converter said otherwise.
        self.attr[tid] |= TokenAttr.CONTROL

    def _detect_special_tokens(self) -> None:
        for slot, texts in (("eot", EOT_TEXTS), ("eom", EOM_TEXTS), *FIM_TEXTS.items()):
            found = self.find(*texts)
            if self.ids[slot] is None and found:
                self.ids[slot] = found[0]
                self._promote_to_control(found[0])
        # "<unused12>"-style control tokens are unused.
        for i in np.flatnonzero(self.attr & TokenAttr.CONTROL):
            if "unused" in self.tokens[i]:
                self.attr[i] |= TokenAttr.UNUSED

    def _end_of_generation_ids(self) -> set[int]:
        eog = {self.ids[s] for s in ("fim_pad", "fim_rep", "fim_sep") if self.ids[s] is not None}
        for tid in self.find(*EOG_TEXTS):
            eog.add(tid)
            self._promote_to_control(tid)
        eog |= {self.ids[s] for s in ("eos", "eot", "eom") if self.ids[s] is not None}
        texts = {self.tokens[i]: i for i in eog}
        # gpt-oss / solar-open: "<|end|>" ends a message, not the generation.
        if "<|end|>" in texts and ({"<|return|>", "<|call|>"} <= texts.keys()
                                   or {"<|calls|>", "<|flush|>"} <= texts.keys()):
            eog.discard(texts["<|end|>"])
            self.attr[texts["<|end|>"]] = TokenAttr.USER_DEFINED
        # gemma4 / plamo2: "</s>" is an ordinary token there.
        if "</s>" in texts and ("<|tool_response>" in texts or "<|plamo:eos|>" in texts):
            eog.discard(texts["</s>"])
            self.attr[texts["</s>"]] = TokenAttr.NORMAL
        return eog

    def piece(self, tid: int, normal_bytes) -> bytes:
        """The bytes token `tid` stands for, control tokens included.  How a NORMAL
        token's text maps to bytes is the vocabulary type's business (normal_bytes)."""
        text = self.tokens[tid]
        attr = int(self.attr[tid])
        if attr & (TokenAttr.CONTROL | TokenAttr.UNKNOWN | TokenAttr.USER_DEFINED):
            return text.encode("utf-8")
        if attr & TokenAttr.NORMAL:
            return normal_bytes(text)
        if attr & TokenAttr.BYTE:
            return bytes([int(text[3:5], 16)])  # "<0x0A>"
        return b""

    def split_special(self, text: str, parse_special: bool) -> list:
        """Cut special tokens out of `text`: a list of str (plain text) and int (token id).

        User-defined tokens are always cut out; control tokens only when
        parse_special.  Like llama.cpp, each special token in turn (longest
        first) splits every remaining piece of plain text at its occurrences.
        """
        fragments: list = [text] if text else []
        for tid in self.special_ids if parse_special else self.user_defined_ids:
            piece = self.tokens[tid]
            if piece not in text:  # cheap exit for the thousands of absent tokens
                continue
            out = []
            for frag in fragments:
                if isinstance(frag, int) or piece not in frag:
                    out.append(frag)
                    continue
                for k, part in enumerate(frag.split(piece)):
                    if k:
                        out.append(tid)
                    if part:
                        out.append(part)
            fragments = out
        return fragments
