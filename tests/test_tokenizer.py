"""Tokenizer vs llama.cpp: the same ids for every fixture string, on both vocab types.

The reference ids in tests/fixtures/<model>/tokens.json come from llama.cpp
(scripts/make_fixtures.py): SmolLM2 is a byte-level BPE vocab ("gpt2", pre
"smollm"), Gemma 3 a SentencePiece one ("llama", 262144 tokens), Qwen2.5-Coder a
byte-level BPE one with the "qwen2" pre-tokenizer (digits one at a time, 151936 tokens).
"""

import json
import types

import pytest

from conftest import FIXTURES, QWEN15, qwen15_enabled
from tinyllm.errors import TinyLLMError
from tinyllm.gguf_file import GGUFFile
from tinyllm.tokenizer import Tokenizer

MODELS = {"smollm2-135m": "smollm2_path", "gemma3-270m": "gemma3_path",
          "qwen2.5-coder-0.5b": "qwen05_path"}
if qwen15_enabled():
    MODELS[QWEN15] = "qwen15_path"


@pytest.fixture(scope="module", params=sorted(MODELS))
def case(request):
    """(fixture dict, Tokenizer, GGUFFile) for one model."""
    name = request.param
    g = GGUFFile(request.getfixturevalue(MODELS[name]))
    ref = json.loads((FIXTURES / name / "tokens.json").read_text())
    return ref, Tokenizer.from_gguf(g), g


def test_ids_match_llama_cpp(case):
    ref, tok, _ = case
    mismatches = []
    for c in ref["cases"]:
        # the fixture's add_bos is llama.cpp's add_special: "as the model says"
        ids = tok.encode(c["text"], add_bos=None if c["add_bos"] else False,
                         parse_special=c["special"])
        if ids != c["ids"]:
            mismatches.append((c["text"], c["add_bos"], c["special"], ids, c["ids"]))
    print(f"{ref['model_file']}: {len(ref['cases']) - len(mismatches)}/{len(ref['cases'])} "
          "identical to llama.cpp")
    assert len(ref["cases"]) >= 40
    assert not mismatches, mismatches[:3]


def test_special_ids_match_llama_cpp(case):
    ref, tok, _ = case
    info = ref["tokenizer"]
    assert tok.vocab_size == info["n_vocab"]
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (info["bos_id"], info["eos_id"], info["add_bos"])
    assert info["eos_id"] in tok.eog_ids and info["eot_id"] in tok.eog_ids
    # the token that closes a chat turn must stop generation
    end_of_turn = [t for t in ("<|im_end|>", "<end_of_turn>") if t in tok.vocab.token_to_id]
    assert end_of_turn and all(tok.vocab.token_to_id[t] in tok.eog_ids for t in end_of_turn)


def test_control_tokens_parsed_only_on_request(case):
    _, tok, _ = case
    marker = "<|im_start|>" if "<|im_start|>" in tok.vocab.token_to_id else "<start_of_turn>"
    tid = tok.vocab.token_to_id[marker]
    assert tok.encode(marker, add_bos=False, parse_special=True) == [tid]
    spelled = tok.encode(marker, add_bos=False)
    assert tid not in spelled and len(spelled) > 1
    assert tok.decode(spelled) == marker


def test_bos_follows_add_bos(case):
    _, tok, _ = case
    plain = tok.encode("Hello", add_bos=False)
    assert tok.encode("Hello", add_bos=True) == [tok.bos_id] + plain
    assert tok.encode("Hello") == ([tok.bos_id] if tok.add_bos else []) + plain


def test_decode_round_trips(case):
    ref, tok, _ = case
    for c in ref["cases"]:
        text = c["text"]
        assert tok.decode(tok.encode(text, add_bos=False)) == text
        # control tokens: parsed to ids, rendered back as their text
        assert tok.decode(tok.encode(text, add_bos=False, parse_special=True)) == text
    ids = tok.encode("<bos>hi", add_bos=True, parse_special=True)
    assert tok.decode(ids, special=False) == tok.decode(ids[1:], special=False)


def test_stream_decoder_holds_back_split_characters(case):
    ref, tok, _ = case
    # Find fixture text where some token ends inside a UTF-8 character, so the
    # streaming path is really exercised (rare emoji become several byte tokens).
    split = None
    for c in ref["cases"]:
        ids = tok.encode(c["text"], add_bos=False)
        pieces = [tok.token_to_piece(i) for i in ids]
        if any(_incomplete_utf8(p) for p in pieces):
            split = (c["text"], ids)
            break
    assert split is not None, "no fixture string splits a character across tokens"
    text, ids = split
    stream = tok.stream()
    outputs = [stream.feed(i) for i in ids] + [stream.flush()]
    assert "".join(outputs) == text
    assert all("\ufffd" not in o for o in outputs)


def test_stream_decoder_hides_control_tokens(case):
    _, tok, _ = case
    ids = tok.encode("hi", add_bos=True)
    stream = tok.stream()
    assert "".join(stream.feed(i) for i in ids) + stream.flush() == "hi"


def _incomplete_utf8(piece: bytes) -> bool:
    try:
        piece.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def _with(g, **changes):
    meta = dict(g.metadata)
    meta.update(changes)
    return types.SimpleNamespace(metadata=meta, path=g.path)


def test_unknown_pre_tokenizer_raises(smollm2_path):
    g = GGUFFile(smollm2_path)
    with pytest.raises(TinyLLMError, match="smollm") as e:
        Tokenizer.from_gguf(_with(g, **{"tokenizer.ggml.pre": "made-up-pre"}))
    assert "made-up-pre" in str(e.value)


def test_unknown_tokenizer_model_raises(smollm2_path):
    g = GGUFFile(smollm2_path)
    with pytest.raises(TinyLLMError, match="gpt2"):
        Tokenizer.from_gguf(_with(g, **{"tokenizer.ggml.model": "t5"}))
