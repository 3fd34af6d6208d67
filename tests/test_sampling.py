"""Which sampler settings a model gets: the user's flags over the GGUF's general.sampling.*
keys over the registry's recommendation over llama.cpp's defaults -- and that the
registry's choice for SmolLM2-135M answers a plain question correctly."""

import re
import shutil
import sys

import gguf
import numpy as np

from conftest import ROOT, run_cli
from tinyllm.gguf_file import GGUFFile
from tinyllm.registry import load_registry
from tinyllm.sampling import Sampler, SamplerSettings, describe, model_settings

sys.path.insert(0, str(ROOT / "scripts"))
from synthetic_gguf import write_model  # noqa: E402

F32, U32, I32 = gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.UINT32, gguf.GGUFValueType.INT32
SAMPLING_KEYS = {"general.sampling.temp": (0.3, F32), "general.sampling.top_k": (7, U32),
                 "general.sampling.penalty_last_n": (-1, I32)}


def _with_sampling_keys(path):
    return write_model(path, n_layer=1, n_embd=64, n_ff=128, n_head=2, n_head_kv=1, n_vocab=512,
                       metadata_override=SAMPLING_KEYS)


def test_each_value_comes_from_the_first_layer_that_gives_it(tmp_path):
    """A file named like a registry model's gets that model's registry values; its own
    general.sampling.* keys win over them, and the user's flags over both."""
    reg = load_registry()["models"]["smollm2-135m"]
    path = _with_sampling_keys(tmp_path / reg["file"])
    s = model_settings(str(path), GGUFFile(str(path)), {"top_k": 3, "min_p": None, "seed": 11})
    assert (s.top_k, s.temperature, s.repeat_last_n) == (3, np.float32(0.3), -1)
    assert s.top_p == reg["sampling"]["top_p"] and s.min_p == SamplerSettings().min_p
    assert s.seed == 11
    assert s.sources == {"top_k": "flag", "seed": "flag", "temperature": "gguf", "repeat_last_n": "gguf",
                         "top_p": "registry", "min_p": "built-in", "repeat_penalty": "built-in"}
    assert describe(s).startswith("top_k 3 (flag) | temp 0.3 repeat_last_n -1 (gguf) | top_p 0.9 (registry)")
    # the same file under another name is not a registry model: its keys, then the built-ins
    other = shutil.copy(path, tmp_path / "mine.gguf")
    s = model_settings(str(other), GGUFFile(str(other)))
    assert (s.top_p, s.sources["top_p"], s.top_k, s.sources["top_k"]) == (0.95, "built-in", 7, "gguf")


def test_registry_names_get_their_recommendations():
    for name, entry in load_registry()["models"].items():
        s = model_settings(name)
        for key, value in entry["sampling"].items():
            if not key.startswith("_"):
                assert getattr(s, key) == value and s.sources[key] == "registry", (name, key)
    qwen = model_settings("qwen2.5-coder-0.5b")
    assert (qwen.temperature, qwen.top_k, qwen.top_p, qwen.repeat_penalty) == (0.7, 20, 0.8, 1.1)


def test_repeat_last_n_zero_is_off_and_minus_one_is_everything():
    """llama.cpp's convention for penalty_last_n; history[-0:] would have meant everything."""
    logits = np.array([3.0, 2.9, 0.0, 0.0], dtype=np.float32)
    history = [0, 3, 3, 3]                 # token 0 seen long ago
    pick = lambda n: Sampler(SamplerSettings(temperature=0, repeat_penalty=2.0, repeat_last_n=n))(logits, history)
    assert pick(0) == 0                    # no penalty
    assert pick(-1) == 1                   # token 0 penalised: 3.0 / 2 < 2.9
    assert pick(3) == 0                    # token 0 is outside the last 3
    assert pick(100) == 1                  # a window longer than the history takes all of it


def test_chat_banner_shows_the_values_and_their_source(tmp_path):
    path = _with_sampling_keys(tmp_path / "synthetic.gguf")
    r = run_cli("chat", path, "--top-p", "0.5", "-n", "2", input="hi\n")
    assert r.returncode == 0, r.stderr[-2000:]
    line = next(ln for ln in r.stderr.splitlines() if ln.strip().startswith("sampling:"))
    assert line.strip() == ("sampling: top_p 0.5 (flag) | temp 0.3 top_k 7 repeat_last_n -1 (gguf) | "
                            "min_p 0.05 repeat_penalty 1 (built-in)")


def test_smollm2_answers_paris_with_its_defaults(smollm2_path):
    """With llama.cpp's defaults (temperature 0.8) SmolLM2-135M answers this wrongly on 2
    of the seeds 1 to 10; the registry's defaults (see registry.json) must answer it on every seed.
    (The bare "What is the capital of France?" no sampler can settle: its top two first
    tokens, "The" and "L", are 0.03-0.09 logits apart, less than what 8-bit activations
    move them, and llama.cpp's greedy answer on this file is "L'Etoile, la Cite, ...".)"""
    question = "What is the capital of France? Answer in one sentence."
    script = "".join(f"/set seed {s}\n{question}\n/reset\n" for s in (1, 2, 3, 4, 5))
    r = run_cli("chat", "smollm2-135m", "-n", "24", input=script)
    assert r.returncode == 0, r.stderr[-2000:]
    assert re.search(r"sampling: temp 0 top_p 0\.9 \(registry\)", r.stderr), r.stderr[:2000]
    replies = r.stdout.splitlines()
    assert len(replies) == 5 and all("Paris" in reply for reply in replies), replies


def test_the_same_request_twice_gives_the_same_reply(smollm2_path):
    """A seeded request repeated on a warm cache must reproduce the first reply.  The
    second time the prompt is all cached, and with 8-bit activations (the default
    numerics) the batched and one-token paths give logits ~0.5 apart on this model:
    Session.prefill must end every prompt on the same path."""
    from tinyllm.generate import Session
    from tinyllm.model import Model
    from tinyllm.tokenizer import Tokenizer
    model = Model(smollm2_path, n_ctx=256, numerics="llama")
    tok = Tokenizer.from_gguf(model.gguf)
    ids = tok.encode("Once upon a time, in a land far away, there lived")
    session = Session(model, tok)
    settings = dict(temperature=1.0, top_k=50, top_p=1.0, min_p=0.0)
    first = session.prefill(ids).copy()
    replies = []
    for _ in range(3):
        sampler = Sampler(SamplerSettings(seed=7, **settings))
        replies.append("".join(session.generate(ids, sampler, n_predict=12)))
        assert session.n_fed == 1                                  # the prompt came from the cache
    np.testing.assert_array_equal(session.prefill(ids), first)   # bit for bit from the cache
    assert replies[0] == replies[1] == replies[2] and len(replies[0]) > 10, replies
    session.reset()                                                # a cold cache: the same again
    assert "".join(session.generate(ids, Sampler(SamplerSettings(seed=7, **settings)), 12)) == replies[0]
