"""Turning a conversation into the token ids a model was trained to continue.

Instruction-tuned GGUFs carry their own Jinja template in `tokenizer.chat_template`
(the same one Hugging Face uses).  We render it in Jinja's sandbox, because the
template comes from a downloaded file and must not be able to touch Python objects.
Models without a template get a built-in format: Gemma's turn markup for gemma
models (the Gemma 3 GGUF here is a base model and has none), ChatML otherwise.

BOS: some templates write `{{ bos_token }}` themselves (Gemma 3's does), others
leave it to the tokenizer (`tokenizer.ggml.add_bos_token`).  Doing both gives two
BOS tokens, which measurably degrades the model, so tokenize() renders, encodes
without BOS, and then puts exactly one in front if the model wants one.
"""

from __future__ import annotations

import re
import sys
import time
from datetime import datetime

from jinja2 import nodes
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

from .errors import TinyLLMError

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Gemma 3's official format:
#   <bos><start_of_turn>user\n{system}\n\n{text}<end_of_turn>\n<start_of_turn>model\n{reply}<end_of_turn>\n ...
# There is no system role: the system text opens the first user turn.  The assistant's
# role is called "model", and message text is trimmed.
GEMMA = (
    "{{ bos_token }}"
    "{% set ns = namespace(sys='') %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set ns.sys = m['content'] | trim ~ '\n\n' %}"
    "{% else %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
    "{% if m['role'] == 'user' %}{{ ns.sys }}{% set ns.sys = '' %}{% endif %}"
    "{{ m['content'] | trim }}<end_of_turn>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

# Control tokens that open a new turn.  A model that writes one has finished its
# reply and is starting to invent the user's next message (base models do this),
# so generation stops there as it does at end-of-generation tokens.
TURN_STARTS = ("<|im_start|>", "<start_of_turn>", "<|start_header_id|>")


# ---- limits ---------------------------------------------------------------------------
#
# The sandbox keeps a template away from Python's objects, but not from the CPU and
# memory: `9**9**9`, `'a' * 10**10`, a string doubled in a loop or loops nested a few
# deep would hang the chat or exhaust memory.  So a render is bounded:
#   - every string or list the template builds, and the output, at most MAX_CHARS;
#     arithmetic that would build a bigger one (`*`, `+`, `**`, `%`) is refused before
#     it runs, and so is any call or filter given an integer larger than MAX_CHARS
#     (no chat template needs `center(10**9)`);
#   - at most MAX_SECONDS of this thread's CPU time, checked at every line of the
#     compiled template (a trace function: a render takes about a millisecond, so the
#     few microseconds per line cost nothing that matters).
# 4M characters is some 30 times the text of a full 32k-token context.
MAX_CHARS = 1 << 22
MAX_SECONDS = 2.0
MAX_POWER_BITS = 4096           # ints a template may compute with `**`


class TemplateLimit(TemplateError):
    """A template went past one of the limits above."""


def _too_long(n: int, what: str):
    raise TemplateLimit(f"{what} of {n:,} characters/items is over the limit of {MAX_CHARS:,} (MAX_CHARS)")


def _check_size(v, what="a value"):
    if isinstance(v, (str, list, tuple, dict)) and len(v) > MAX_CHARS:
        _too_long(len(v), what)
    return v


def _check_args(args, kwargs, what):
    for a in (*args, *kwargs.values()):
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > MAX_CHARS:
            raise TemplateLimit(f"{what} was given {a:,}, over the limit of {MAX_CHARS:,} (MAX_CHARS)")
        _check_size(a, f"an argument of {what}")


def _check_format(fmt) -> None:
    """str.format / the format filter / %: a width like {:>999999999} or %0999999999d is a
    gigabyte from a short string, so any number in the format is bounded."""
    if isinstance(fmt, str) and any(int(d) > MAX_CHARS for d in re.findall(r"\d{7,}", fmt)):
        raise TemplateLimit(f"a format width over the limit of {MAX_CHARS:,} (MAX_CHARS)")


def _length(x) -> int:
    return len(x) if isinstance(x, (str, list, tuple)) else len(str(x))


def _estimate(name: str, args: tuple, kwargs: dict) -> int:
    """An upper bound on the size of what the string functions that can multiply their
    input return (replace, join, indent, expandtabs), before they run; 0 for the rest."""
    strs = [a for a in args if isinstance(a, str)]
    if name in ("replace", "do_replace") and len(strs) >= 3:
        text, old, new = strs[:3]
        hits = text.count(old) if old else len(text) + 1
        return len(text) + hits * max(0, len(new) - len(old))
    if name in ("join", "do_join"):
        seqs = [a for a in args if isinstance(a, (list, tuple))]
        if seqs:
            sep = strs[0] if strs else ""
            return sum(_length(x) for x in seqs[0]) + len(sep) * len(seqs[0])
    if name in ("indent", "do_indent") and strs:
        text, width = strs[0], ([a for a in args[1:] if not isinstance(a, bool)] or [4])[0]
        width = kwargs.get("width", width)
        return len(text) + (text.count("\n") + 1) * (width if isinstance(width, int) else len(str(width)))
    if name == "expandtabs" and strs:
        tab = ([a for a in args if isinstance(a, int)] or [kwargs.get("tabsize", 8)])[0]
        return len(strs[0]) + strs[0].count("\t") * max(0, tab)
    if name in ("format", "do_format") and strs:
        _check_format(strs[0])
    return 0


def _raise(msg):
    raise TemplateError(msg)


def _strftime_now(fmt: str) -> str:     # used by Llama 3 templates for "Today Date"
    if not isinstance(fmt, str) or len(fmt) > 256:
        raise TemplateLimit("strftime_now takes a format string of at most 256 characters")
    return datetime.now().strftime(fmt)


class _Namespace(Namespace):
    """namespace() whose attributes are size-checked as they are set (`ns.s = ns.s ~ ns.s`)."""

    def __setitem__(self, name, value):
        super().__setitem__(name, _check_size(value, f"namespace attribute {name!r}"))


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset(["*", "+", "**", "%"])

    def call_binop(self, context, operator, left, right):
        if operator == "**":
            if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and \
                    right * max(left.bit_length(), 1) > MAX_POWER_BITS:
                raise TemplateLimit(f"{left} ** {right} is over the limit of {MAX_POWER_BITS}-bit "
                                    f"integers (MAX_POWER_BITS)")
        elif operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_CHARS:
                    _too_long(len(seq) * n, "a repeated string or list")
            if isinstance(left, int) and isinstance(right, int) and \
                    left.bit_length() + right.bit_length() > MAX_POWER_BITS:
                raise TemplateLimit(f"a product over the limit of {MAX_POWER_BITS}-bit integers (MAX_POWER_BITS)")
        elif operator == "+":
            if isinstance(left, (str, list, tuple)) and hasattr(right, "__len__") and \
                    len(left) + len(right) > MAX_CHARS:
                _too_long(len(left) + len(right), "a concatenation")
        elif operator == "%" and isinstance(left, str):
            _check_args(right if isinstance(right, tuple) else (right,), {}, "a % format")   # %*d
            _check_format(left)
        return _check_size(super().call_binop(context, operator, left, right), "a result")

    def call(__self, __context, __obj, *args, **kwargs):
        name = getattr(__obj, "__name__", "a function")
        _check_args(args, kwargs, name)
        # 'text'.replace(...): the text (str.format comes wrapped by the sandbox)
        target = getattr(__obj, "__self__", None) or getattr(getattr(__obj, "__wrapped__", None),
                                                             "__self__", None)
        if isinstance(target, str) and _estimate(name, (target, *args), kwargs) > MAX_CHARS:
            _too_long(_estimate(name, (target, *args), kwargs), f"the result of {name}")
        return _check_size(super().call(__context, __obj, *args, **kwargs), "a result")


def _bounded_filter(f, name):
    def run(*args, **kwargs):
        _check_args(args, kwargs, f"the filter {name!r}")
        if _estimate("do_" + name, args, kwargs) > MAX_CHARS:
            _too_long(_estimate("do_" + name, args, kwargs), f"the result of filter {name!r}")
        return _check_size(f(*args, **kwargs), f"the result of filter {name!r}")
    for attr in ("jinja_pass_arg",):     # pass_context / pass_eval_context / pass_environment
        if hasattr(f, attr):
            setattr(run, attr, getattr(f, attr))
    return run


class _Clock:
    """sys.settrace hook: stop a render after MAX_SECONDS of this thread's CPU, and check
    the template's local variables for oversized strings at each of its lines."""

    def __init__(self):
        self.deadline = time.thread_time() + MAX_SECONDS

    def _check(self, frame):
        if time.thread_time() > self.deadline:
            raise TemplateLimit(f"rendering took more than {MAX_SECONDS:g} s of CPU (MAX_SECONDS)")

    def __call__(self, frame, event, arg):          # a new frame: trace it if it is the template's
        self._check(frame)
        return self.line if frame.f_code.co_filename == "<template>" else None

    def line(self, frame, event, arg):
        self._check(frame)
        for name, v in frame.f_locals.items():
            if isinstance(v, str) and len(v) > MAX_CHARS:
                _too_long(len(v), f"the template variable {name.removeprefix('l_0_')!r}")
        return self.line


def _environment() -> ImmutableSandboxedEnvironment:
    env = _BoundedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = _strftime_now
    env.globals["namespace"] = _Namespace
    env.filters = {name: _bounded_filter(f, name) for name, f in env.filters.items()}
    return env


REFUSED_TAGS = {nodes.Include: "include", nodes.Import: "import", nodes.FromImport: "import",
                nodes.Extends: "extends"}


BUILTIN_HINT = " (chat --builtin-template uses tinyllm's built-in format instead)"


def _one_line(e: BaseException) -> str:
    if isinstance(e, RecursionError):
        return "recursion too deep (a macro that calls itself without end?)"
    if isinstance(e, MemoryError):
        return "out of memory while rendering"
    text = " ".join(str(e).split()) or type(e).__name__
    kind = "" if isinstance(e, TemplateError) else f"{type(e).__name__}: "
    return kind + (text if len(text) <= 300 else text[:300] + "...")


class ChatTemplate:
    def __init__(self, source: str, name: str, bos_token: str = "", eos_token: str = "",
                 builtin: bool = False):
        env = _environment()
        try:
            ast = env.parse(source)
            for node_type, tag in REFUSED_TAGS.items():
                if next(ast.find_all(node_type), None) is not None:
                    # a GGUF's template has no other templates to load, and must not read files
                    raise TinyLLMError(f"{name} uses {{% {tag} %}}, which chat templates may not do"
                                       f"{BUILTIN_HINT if not builtin else ''}")
            self.template = env.from_string(ast)
        except (TemplateError, RecursionError, MemoryError) as e:
            raise TinyLLMError(f"{name} does not parse: {_one_line(e)}"
                               f"{BUILTIN_HINT if not builtin else ''}") from None
        self.source, self.name = source, name
        self.bos_token, self.eos_token = bos_token, eos_token
        self.builtin = builtin          # True: the GGUF had no template (a base model), or forced
        self.forced = False             # True: it had one, and --builtin-template set it aside

    @classmethod
    def for_model(cls, gguf, tokenizer, builtin: bool = False) -> "ChatTemplate":
        """The GGUF's own template, or (none there, or builtin=True) the built-in format."""
        src = gguf.get("tokenizer.chat_template")
        bos = tokenizer.decode([tokenizer.bos_id]) if tokenizer.bos_id is not None else ""
        eos = tokenizer.decode([tokenizer.eos_id]) if tokenizer.eos_id is not None else ""
        if src is not None and not isinstance(src, str):
            raise TinyLLMError(f"{gguf.path}: tokenizer.chat_template is not a string{BUILTIN_HINT}")
        if src and not builtin:
            return cls(src, "the model's own template", bos, eos)
        asked = " (asked for with --builtin-template)" if src else ""
        if str(gguf.get("general.architecture", "")).startswith("gemma"):
            t = cls(GEMMA, "built-in Gemma turn format" + asked, bos, eos, builtin=True)
        else:
            t = cls(CHATML, "built-in ChatML" + asked, bos, eos, builtin=True)
        t.forced = bool(asked)           # the model has a template; the user chose ours
        return t

    def render(self, messages: list, add_generation_prompt: bool = True) -> str:
        msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
        old_trace = sys.gettrace()
        sys.settrace(_Clock())
        try:
            out, n = [], 0
            for piece in self.template.generate(messages=msgs, add_generation_prompt=add_generation_prompt,
                                                bos_token=self.bos_token, eos_token=self.eos_token):
                n += len(piece)
                if n > MAX_CHARS:
                    _too_long(n, "the rendered conversation")
                out.append(piece)
            return "".join(out)
        except Exception as e:   # the template is input: whatever it raises is one line, not a traceback
            limit = " -- refused" if isinstance(e, TemplateLimit) else ""
            raise TinyLLMError(f"{self.name}: {_one_line(e)}{limit}"
                               f"{BUILTIN_HINT if not self.builtin else ''}") from None
        finally:
            sys.settrace(old_trace)

    def check(self) -> None:
        """Render a short conversation once: a template that fails or runs past the limits
        is refused when the chat starts, not at the first message."""
        self.render([{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi."},
                     {"role": "user", "content": "How are you?"}])

    def tokenize(self, messages: list, tokenizer, add_generation_prompt: bool = True) -> list:
        """Token ids of the rendered conversation, with BOS exactly once if the model uses BOS."""
        text = self.render(messages, add_generation_prompt)
        ids = tokenizer.encode(text, add_bos=False, parse_special=True)
        bos = tokenizer.bos_id
        if bos is None:
            return ids
        while ids[:2] == [bos, bos]:        # a template that writes BOS twice
            ids.pop(0)
        if tokenizer.add_bos and ids[:1] != [bos]:
            ids.insert(0, bos)
        return ids

    def turn_start_ids(self, tokenizer) -> set:
        """Ids of the control tokens that open a turn in this format (see TURN_STARTS)."""
        out = set()
        for marker in TURN_STARTS:
            if marker in self.source:
                ids = tokenizer.encode(marker, add_bos=False, parse_special=True)
                if len(ids) == 1:
                    out.add(ids[0])
        return out
