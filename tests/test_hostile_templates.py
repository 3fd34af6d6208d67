"""Hostile chat templates (a GGUF's tokenizer.chat_template is downloaded code): every
failure is one line, rendering is bounded in time and size, the sandbox holds."""

import io
import json
import subprocess
import sys

import pytest

import gguf_fuzz
from conftest import ROOT, run_cli
from tinyllm.chat_template import MAX_CHARS, ChatTemplate
from tinyllm.errors import TinyLLMError

CONV = [{"role": "user", "content": "hi"}]

# template -> what the one-line error must say (the list, and what else blows up)
HOSTILE = {
    "include": ("{% include 'x.j2' %}", "{% include %}"),
    "import": ("{% import 'x.j2' as x %}", "{% import %}"),
    "from_import": ("{% from 'x' import y %}", "{% import %}"),
    "extends": ("{% extends 'base' %}", "{% extends %}"),
    "range": ("{% for i in range(10**9) %}x{% endfor %}", "MAX_CHARS"),
    "repeat": ("{{ 'a' * 10**10 }}", "MAX_CHARS"),
    "repeat_literal": ("{{ 'a' * 10000000000 }}", "MAX_CHARS"),       # not folded at compile time
    "list_repeat": ("{{ [1] * 10**9 }}", "MAX_CHARS"),
    "power": ("{{ 9 ** (9 ** 9) }}", "MAX_POWER_BITS"),
    "power_chain": ("{{ 2 ** 100000000 }}", "MAX_POWER_BITS"),
    "recursive_macro": ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursion"),
    "exponential_macro": ("{% macro f(n) %}{% if n > 1 %}{{ f(n-1) }}{{ f(n-2) }}{% else %}x{% endif %}"
                          "{% endmacro %}{{ f(40) }}", "MAX_SECONDS"),
    "nested_loops": ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                     "MAX_SECONDS"),
    "nested_loops_output": ("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}"
                            "{% endfor %}", "MAX_"),
    "doubling_namespace": ("{% set ns = namespace(s='a') %}{% for i in range(64) %}"
                           "{% set ns.s = ns.s ~ ns.s %}{% endfor %}", "MAX_CHARS"),
    "doubling_plus": ("{% set ns = namespace(s='a') %}{% for i in range(64) %}"
                      "{% set ns.s = ns.s + ns.s %}{% endfor %}", "MAX_CHARS"),
    "doubling_set": ("{% set s = 'a' %}" + "{% set s = s ~ s %}" * 40 + "{{ s }}", "MAX_CHARS"),
    "strftime_huge": ("{{ strftime_now('%Y' * 100000000) }}", "MAX_CHARS"),
    "strftime_long": ("{{ strftime_now('%Y' * 1000) }}", "256 characters"),
    "center": ("{{ 'a'.center(1000000000) }}", "MAX_CHARS"),
    "center_filter": ("{{ 'a' | center(1000000000) }}", "MAX_CHARS"),
    "indent": ("{{ ('\n' * 4000000) | indent(4000000) }}", "MAX_CHARS"),
    "replace": ("{{ ('a' * 4000000).replace('a', 'a' * 4000) }}", "MAX_CHARS"),
    "join": ("{% set s = 'a' * 4000000 %}{{ ([s] * 2000) | join }}", "MAX_CHARS"),
    "expandtabs": ("{{ ('\t' * 4000000).expandtabs(4000000) }}", "MAX_CHARS"),
    "printf_width": ("{{ '%0999999999d' % 1 }}", "MAX_CHARS"),
    "printf_star": ("{{ '%*d' % (999999999, 1) }}", "MAX_CHARS"),
    "format_width": ("{{ '{:>999999999}'.format(1) }}", "MAX_CHARS"),
    "format_filter": ("{{ '%0999999999d' | format(1) }}", "MAX_CHARS"),
    "division_by_zero": ("{{ 1 // 0 }}", "ZeroDivisionError"),
    "raise": ("{{ raise_exception('roles must alternate') }}", "roles must alternate"),
    "syntax": ("{% for %}", "does not parse"),
    "escape_mro": ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "unsafe"),
    "escape_globals": ("{{ cycler.__init__.__globals__.os.popen('id').read() }}", "unsafe"),
    "escape_format": ("{{ '{0.__class__.__mro__}'.format('') }}", "unsafe"),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_template_is_one_line(name):
    src, needle = HOSTILE[name]
    with pytest.raises(TinyLLMError) as e:
        ChatTemplate(src, "the model's own template").render(CONV)
    msg = str(e.value)
    assert "\n" not in msg and needle in msg, msg
    assert "--builtin-template" in msg            # what to do instead


def test_limits_leave_real_work_alone():
    # big but legitimate: a 1M-character message, loops of 100k, a 320-character date
    t = ChatTemplate("{% for m in messages %}{{ m['content'] }}{% endfor %}"
                     "{% for i in range(100000) %}{% endfor %}{{ strftime_now('%Y%m%d' * 40) }}", "t")
    out = t.render([{"role": "user", "content": "x" * 10**6}])
    assert len(out) == 10**6 + 320
    with pytest.raises(TinyLLMError, match="rendered conversation"):
        t.render([{"role": "user", "content": "x" * (MAX_CHARS + 1)}])


@pytest.fixture(scope="module")
def hostile_gguf(tmp_path_factory, smollm2_path):
    """SmolLM2 with a chat template that loops for ever."""
    p = tmp_path_factory.mktemp("tmpl") / "looping.gguf"
    gguf_fuzz.with_string(smollm2_path, p, "tokenizer.chat_template",
                          HOSTILE["nested_loops"][0] + "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    return p


def test_chat_refuses_a_template_past_its_limits(hostile_gguf):
    """Such a GGUF used to hang `tinyllm chat` for minutes; now it is refused at start-up."""
    r = run_cli("chat", hostile_gguf, "-n", "4", "--temp", "0", input="hello\n", timeout=900)
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("tinyllm: error: the model's own template: rendering took more than 2 s")
    assert "--builtin-template" in last and "Traceback" not in r.stderr


def test_builtin_template_only_when_asked(hostile_gguf):
    r = run_cli("chat", hostile_gguf, "-n", "4", "--temp", "0", "--builtin-template",
                input="hello\n", timeout=900)
    assert r.returncode == 0, r.stderr
    assert "built-in ChatML (asked for with --builtin-template)" in r.stderr
    assert r.stdout.strip()                        # a reply came


def test_non_utf8_input_is_replaced_with_a_note():
    """`printf 'hello \\xff\\xfe there\\n' | tinyllm chat` was a UnicodeEncodeError in the BPE tokenizer."""
    r = subprocess.run([sys.executable, "-m", "tinyllm", "chat", "smollm2-135m", "-n", "4", "--temp", "0"],
                       input=b"hello \xff\xfe there\n", capture_output=True, cwd=ROOT, timeout=900)
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode == 0, err
    assert "Traceback" not in err
    assert "not valid UTF-8: 2 invalid byte sequences replaced with U+FFFD" in err
    assert r.stdout.strip()


# ---- the REPL keeps everything typed -------------------------------------------------------

@pytest.fixture(scope="module")
def small_chat(smollm2_path):
    from tinyllm.chat import Chat
    from tinyllm.model import Model
    from tinyllm.sampling import Sampler, SamplerSettings
    from tinyllm.tokenizer import Tokenizer
    model = Model(smollm2_path, n_ctx=96)
    tok = Tokenizer.from_gguf(model.gguf)
    return lambda: Chat(model, tok, Sampler(SamplerSettings(temperature=0)), 24, "Be brief.",
                        out=io.StringIO(), err=io.StringIO())


TURNS = [("user", "Tell me about the sea and the ships on it."), ("assistant", "The sea is wide. " * 4),
         ("user", "And the mountains?"), ("assistant", "Mountains are high. " * 4),
         ("user", "What about rivers?")]


def test_save_keeps_trimmed_turns_marked_and_load_restores_the_view(small_chat, tmp_path):
    chat = small_chat()
    chat.messages += [{"role": r, "content": c} for r, c in TURNS]
    chat.fit_context()
    assert chat.trimmed >= 2
    chat.command(f"/save {tmp_path / 'c.json'}")
    saved = json.loads((tmp_path / "c.json").read_text())["messages"]
    assert [m["content"] for m in saved[1:]] == [c for _, c in TURNS]          # everything typed
    assert [bool(m.get("trimmed")) for m in saved[1:]] == [i < chat.trimmed for i in range(len(TURNS))]
    assert f"{chat.trimmed} of them trimmed from the context" in chat.err.getvalue()
    again = small_chat()
    again.command(f"/load {tmp_path / 'c.json'}")
    assert again.messages == chat.messages and again.visible() == chat.visible()


def test_save_never_overwrites_silently(small_chat, tmp_path):
    chat = small_chat()
    chat.messages += [{"role": "user", "content": "Hi"}]
    target = tmp_path / "mine.json"
    target.write_text("my own file\n")
    chat.command(f"/save {target}")
    assert target.read_text() == "my own file\n"
    assert "exists; not overwritten. /save --force" in chat.err.getvalue()
    chat.command(f"/save --force {target}")
    assert json.loads(target.read_text())["messages"][-1] == {"role": "user", "content": "Hi"}
