"""`tinyllm serve` against the real clients: the `ollama` and `openai` Python packages
talk to a server subprocess on a free loopback port, serving the real SmolLM2.

Replies are greedy (temperature 0) and short (num_predict <= 16).  The server keeps
one KV cache per model and reuses the longest common prefix of the next request, so
where two replies are compared the cache is first moved to an unrelated prompt: both
replies are then computed from a full prefill and must be the same text.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from tinyllm import serve

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m"
GREEDY = {"temperature": 0, "num_predict": 8}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, log_dir, *args):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(os.devnull, "w")
        self.err_path = Path(log_dir) / f"serve-{self.port}.log"
        self.err = open(self.err_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "tinyllm", "serve", *args, "--port", str(self.port)],
                                     cwd=ROOT, stdout=self.log, stderr=self.err)

    def wait_ready(self, timeout=1200):
        """Up once it answers /api/version (the first model is loaded before it listens;
        a cold numba cache makes that take minutes)."""
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.stderr()}")
            try:
                if httpx.get(self.url + "/api/version", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.5)
        raise RuntimeError(f"server not up after {timeout} s: {self.stderr()}")

    def stderr(self) -> str:
        if not self.err.closed:
            self.err.flush()
        return self.err_path.read_text()

    def stop(self, sig=signal.SIGINT, timeout=60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        self.err.close()
        self.log.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def server(smollm2_path, tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("serve"), MODEL, "--ctx", "1024", "--keep-alive", "10m").wait_ready()
    yield srv
    rc = srv.stop()
    assert rc == 0, srv.stderr()


@pytest.fixture(scope="module")
def client(server):
    return ollama.Client(host=server.url)


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="tinyllm-needs-none")


def move_cache(client):
    """Fill the cache with an unrelated raw prompt: the next request prefills from scratch."""
    client.generate(model=MODEL, prompt="Zebras graze", raw=True, options={"temperature": 0, "num_predict": 1})


def ps_json(server) -> dict:
    """/api/ps as sent: the `ollama` client's model drops the `tinyllm` ledger fields."""
    return httpx.get(server.url + "/api/ps", timeout=30).json()


def idle_ps(server, timeout=60) -> dict:
    """/api/ps once the model is no longer busy (a stopped stream releases it at its next token)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        ps = ps_json(server)
        if not ps["models"] or not ps["models"][0]["tinyllm"]["busy"]:
            return ps
        time.sleep(0.2)
    raise AssertionError("model still busy")


# ---- the ollama client --------------------------------------------------------------------

def test_ollama_list_show_ps(server, client, smollm2_path):
    (m,) = client.list().models
    assert m.model == f"{MODEL}:latest" and m.size == os.path.getsize(smollm2_path)
    assert m.details.format == "gguf" and m.details.family == "llama"
    assert m.details.quantization_level == "Q4_1" and m.details.parameter_size == "134.52M"
    assert m.digest == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

    show = client.show(MODEL)
    assert show.modelinfo["llama.block_count"] == 30 and show.modelinfo["llama.context_length"] == 8192
    assert show.modelinfo["tokenizer.ggml.tokens"] is None          # big arrays only with verbose
    assert "<|im_start|>" in show.template and show.details.quantization_level == "Q4_1"
    assert show.capabilities == ["completion"]

    client.generate(model=MODEL, prompt="Hi", options=GREEDY)
    (p,) = client.ps().models
    assert p.model == f"{MODEL}:latest" and p.context_length == 1024 and p.size_vram == 0
    (raw,) = ps_json(server)["models"]
    assert raw["size"] == p.size
    led = raw["tinyllm"]
    # the ledger: the file is mapped, the KV cache holds what the session holds
    assert p.size > led["weights_file"] == os.path.getsize(smollm2_path)
    per_token = 30 * 3 * (64 + 64) * 2                 # SmolLM2, f16 keys and values
    assert led["kv_used"] == led["tokens_in_cache"] * per_token > 0
    assert led["kv_used"] <= led["kv_allocated"] <= led["kv_full"] == 1024 * per_token


FRANCE = "What is the capital of France? Answer in one sentence."   # test_sampling.py: why


def test_ollama_generate_streaming_and_not(client):
    move_cache(client)
    whole = client.generate(model=MODEL, prompt=FRANCE, options=GREEDY)
    assert "Paris" in whole.response
    assert whole.done and whole.done_reason in ("stop", "length") and 0 < whole.eval_count <= 8
    assert whole.total_duration >= whole.prompt_eval_duration + whole.eval_duration > 0
    assert whole.context[-whole.eval_count:] and len(whole.context) == whole.prompt_eval_count + whole.eval_count
    move_cache(client)
    parts = list(client.generate(model=MODEL, prompt=FRANCE, options=GREEDY,
                                 stream=True))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.response for p in parts) == whole.response
    assert parts[-1].eval_count == whole.eval_count and parts[-1].prompt_eval_count == whole.prompt_eval_count


def test_ollama_chat_streaming_and_not(client):
    msgs = [{"role": "user", "content": "What is the capital of France? One word."}]
    move_cache(client)
    whole = client.chat(model=MODEL, messages=msgs, options=GREEDY)
    assert whole.message.role == "assistant" and "Paris" in whole.message.content
    move_cache(client)
    parts = list(client.chat(model=MODEL, messages=msgs, options=GREEDY, stream=True))
    assert "".join(p.message.content for p in parts) == whole.message.content
    assert parts[-1].done and parts[-1].done_reason == whole.done_reason
    # a conversation that goes on: the earlier turns come from the cache
    follow = client.chat(model=MODEL, options=GREEDY, messages=msgs + [
        {"role": "assistant", "content": whole.message.content}, {"role": "user", "content": "And of Italy?"}])
    assert follow.message.content and follow.prompt_eval_count > whole.prompt_eval_count


def test_options_stop_and_seed(client):
    r = client.generate(model=MODEL, prompt="Count: 1, 2, 3,", raw=True,
                        options={"temperature": 0, "num_predict": 16, "stop": [" 6"]})
    assert r.done_reason == "stop" and " 6" not in r.response and "5" in r.response
    sampled = [client.generate(model=MODEL, prompt="Once upon a time", raw=True,
                               options={"temperature": 1.0, "top_k": 50, "seed": 7, "num_predict": 6}).response
               for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_ndjson_wire_format(server):
    with httpx.stream("POST", server.url + "/api/chat", timeout=120, json={
            "model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "options": GREEDY}) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
        body = r.read().decode()
    lines = body.split("\n")
    assert lines[-1] == "" and all(lines[:-1])            # no blank line anywhere
    objs = [json.loads(x) for x in lines[:-1]]
    final = objs[-1]
    for key in ("done", "done_reason", "total_duration", "load_duration", "prompt_eval_count",
                "prompt_eval_duration", "eval_count", "eval_duration"):
        assert key in final, key
    assert final["done"] is True and all(o["done"] is False for o in objs[:-1])
    assert len(objs) - 1 == final["eval_count"] or final["done_reason"] == "stop"
    assert isinstance(final["eval_duration"], int) and final["eval_duration"] > 1000   # nanoseconds


def test_errors_have_ollamas_shape(server, client):
    r = httpx.post(server.url + "/api/chat", content=b"{not json", timeout=30)
    assert r.status_code == 400 and set(r.json()) == {"error"}
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 404 and "no-such-model" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model=MODEL, prompt="word " * 1100, raw=True)
    assert e.value.status_code == 400 and "context is 1024" in e.value.error
    r = httpx.post(server.url + "/api/generate", timeout=30,
                   json={"model": MODEL, "prompt": "x", "options": {"num_predict": "many"}})
    assert r.status_code == 400 and "num_predict" in r.json()["error"]
    r = httpx.post(server.url + "/api/generate", content=b" " * (serve.MAX_BODY + 1), timeout=30)
    assert r.status_code == 413
    assert httpx.get(server.url + "/api/nothing", timeout=30).status_code == 404
    assert httpx.get(server.url + "/api/chat", timeout=30).json()["error"].endswith("method not allowed")
    # after all that, it still serves
    assert client.generate(model=MODEL, prompt="Hi", options=GREEDY).done


# ---- the openai client --------------------------------------------------------------------

def test_openai_models_and_chat(oai, client):
    assert [m.id for m in oai.models.list()] == [f"{MODEL}:latest"]
    msgs = [{"role": "user", "content": "What is the capital of France? One word."}]
    move_cache(client)
    r = oai.chat.completions.create(model=MODEL, messages=msgs, temperature=0, max_tokens=8)
    text = r.choices[0].message.content
    assert "Paris" in text and r.choices[0].finish_reason in ("stop", "length")
    assert r.object == "chat.completion" and r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    move_cache(client)
    chunks = list(oai.chat.completions.create(model=MODEL, messages=msgs, temperature=0, max_tokens=8,
                                              stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    assert chunks[-2].choices[0].finish_reason == r.choices[0].finish_reason
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="no-such-model", messages=msgs)


def test_sse_wire_format(server):
    with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=120, json={
            "model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": True,
            "max_tokens": 4, "temperature": 0}) as r:
        assert r.headers["content-type"] == "text/event-stream"
        body = r.read().decode()
    events = body.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: {") for e in events[:-2])
    assert all(json.loads(e[6:])["object"] == "chat.completion.chunk" for e in events[:-2])


# ---- serving behaviour ----------------------------------------------------------------------

def test_a_client_that_disconnects_stops_its_generation(server, client):
    move_cache(client)
    with httpx.stream("POST", server.url + "/api/generate", timeout=120, json={
            "model": MODEL, "prompt": "Write a long story about a dragon.", "options": {"num_predict": 900}}) as r:
        lines = r.iter_lines()
        first = json.loads(next(lines))
        assert first["done"] is False
        # closing the response drops the connection
    led = idle_ps(server)["models"][0]["tinyllm"]
    # far fewer than the 900 tokens asked for were computed
    assert led["tokens_in_cache"] < 60 + 200


def test_one_generation_at_a_time(server):
    """Two streams for the same model: the second starts after the first has finished."""
    times = {}

    def run(key, prompt):
        t_first = None
        with httpx.stream("POST", server.url + "/api/generate", timeout=300, json={
                "model": MODEL, "prompt": prompt, "raw": True, "options": {"temperature": 0, "num_predict": 12}}) as r:
            for line in r.iter_lines():
                if t_first is None:
                    t_first = time.perf_counter()
                final = json.loads(line)
                t_done = time.perf_counter()       # when the done line came
        times[key] = (t_first, t_done, final)

    a = threading.Thread(target=run, args=("a", "The first request says"))
    b = threading.Thread(target=run, args=("b", "A second request says"))
    a.start()
    time.sleep(0.3)
    b.start()
    a.join(300)
    b.join(300)
    first, second = sorted(times.values())
    assert first[2]["done"] and second[2]["done"]
    assert second[0] >= first[1] - 0.05          # b's first token came after a's last


def test_keep_alive_and_num_ctx(server, client):
    r = client.generate(model=MODEL, prompt="Hi", options={**GREEDY, "num_ctx": 512}, keep_alive="2s")
    assert r.done and r.load_duration > 0                       # reloaded for the new context
    assert client.ps().models[0].context_length == 512
    t0 = time.time()
    while client.ps().models and time.time() - t0 < 30:
        time.sleep(0.5)
    assert client.ps().models == []                              # unloaded once idle for 2 s
    r = client.generate(model=MODEL, prompt="Hi", options=GREEDY)
    assert r.load_duration > 0 and client.ps().models[0].context_length == 1024
    # a request with no prompt and keep_alive 0 unloads now
    r = client.generate(model=MODEL, keep_alive=0)
    assert r.done_reason == "unload" and client.ps().models == []


def test_ctrl_c_stops_a_generation_and_the_server(smollm2_path, tmp_path):
    srv = ServerProcess(tmp_path, MODEL, "--ctx", "1024").wait_ready()
    got = []

    def stream():
        try:
            with httpx.stream("POST", srv.url + "/api/generate", timeout=120, json={
                    "model": MODEL, "prompt": "Tell me a long story.", "options": {"num_predict": 900}}) as r:
                for line in r.iter_lines():
                    got.append(line)
        except httpx.HTTPError:
            pass
    t = threading.Thread(target=stream)
    t.start()
    while not got and t.is_alive():
        time.sleep(0.1)
    t0 = time.time()
    assert srv.stop(signal.SIGINT, timeout=60) == 0
    assert time.time() - t0 < 30
    t.join(30)
    assert "stopped" in srv.stderr() and "Traceback" not in srv.stderr()
    assert len(got) < 900


def test_two_models_side_by_side(smollm2_path, gemma3_path, tmp_path):
    """The second model loads on first use (the memory check lets it: this machine has room)
    and both stay loaded; /api/tags lists just the models named."""
    srv = ServerProcess(tmp_path, MODEL, "gemma3-270m", "--ctx", "512").wait_ready()
    try:
        c = ollama.Client(host=srv.url)
        assert [m.model for m in c.list().models] == [f"{MODEL}:latest", "gemma3-270m:latest"]
        assert [m.model for m in c.ps().models] == [f"{MODEL}:latest"]       # the first, at start-up
        r = c.generate(model="gemma3-270m", prompt="The capital of France is", raw=True, options=GREEDY)
        assert r.done and r.load_duration > 0 and r.eval_count > 0 and "France" in r.response
        assert c.generate(model=MODEL, prompt="Hi", options=GREEDY).load_duration == 0
        assert sorted(m.model for m in c.ps().models) == ["gemma3-270m:latest", f"{MODEL}:latest"]
    finally:
        assert srv.stop() == 0, srv.stderr()


def test_listening_beyond_loopback_warns(tmp_path):
    from conftest import run_cli
    r = run_cli("serve", str(tmp_path / "missing.gguf"), "--host", "0.0.0.0", "--port", str(free_port()))
    assert r.returncode == 2 and "warning: listening on 0.0.0.0" in r.stderr
    assert "model file not found" in r.stderr and "Traceback" not in r.stderr


def test_a_busy_port_fails_before_the_model_loads(smollm2_path):
    from conftest import run_cli
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        t0 = time.time()
        r = run_cli("serve", MODEL, "--port", str(s.getsockname()[1]))
    assert r.returncode == 2 and "cannot listen on 127.0.0.1" in r.stderr and "Traceback" not in r.stderr
    assert "loading" not in r.stderr and time.time() - t0 < 60


# ---- pieces -----------------------------------------------------------------------------------

@pytest.mark.parametrize("value, seconds", [
    (None, 300.0), ("5m", 300.0), ("1h30m", 5400.0), ("10s", 10.0), ("1.5s", 1.5), (30, 30.0),
    ("45", 45.0), (0, 0.0), ("0", 0.0), (-1, float("inf")), ("-1m", float("inf")), ("250ms", 0.25),
])
def test_parse_keep_alive(value, seconds):
    assert serve.parse_keep_alive(value, 300.0) == seconds


@pytest.mark.parametrize("value", ["soon", "5 minutes", "1x", True, [1]])
def test_parse_keep_alive_rejects(value):
    with pytest.raises(serve.HTTPError):
        serve.parse_keep_alive(value, 300.0)


def test_memory_check_refuses_what_does_not_fit(smollm2_path, monkeypatch):
    """The check run/chat use (memory.load_bytes against what is available), evicting nothing
    when no other model is loaded."""
    need = serve.memory_needed(smollm2_path, 1024, "f16", True)
    assert need > os.path.getsize(smollm2_path) + 1024 * 30 * 3 * 128 * 2
    models = serve.Models({MODEL: smollm2_path}, 1024, "f16", True, None, 300.0, threading.Event())
    monkeypatch.setattr(serve, "mem_available", lambda: need - 1)
    with pytest.raises(serve.HTTPError) as e:
        models._make_room(MODEL, smollm2_path, 1024)
    assert e.value.status == 500 and "more system memory" in e.value.message
    monkeypatch.setattr(serve, "mem_available", lambda: need)
    models._make_room(MODEL, smollm2_path, 1024)


def test_threads_hold_in_every_request_thread(smollm2_path, monkeypatch):
    """--threads N: numba's thread count is per Python thread, and each request runs in one
    of waitress's worker threads, not the one that loaded the model.  The forward passes of a
    generation requested from a fresh thread run on N threads."""
    import io

    import numba

    from tinyllm import model as model_module
    seen = []
    forward = model_module.Model.forward

    def spy(self, *args, **kwargs):
        seen.append(numba.get_num_threads())
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(model_module.Model, "forward", spy)
    models = serve.Models({MODEL: smollm2_path}, 512, "f16", True, 1, 300.0, threading.Event())
    app = serve.Server(models, threading.Event())
    body = json.dumps({"model": MODEL, "prompt": "Hi", "stream": False,
                       "options": {"num_predict": 3, "temperature": 0}}).encode()
    replies = []

    def request():           # a new thread: numba's own default there is every core
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/api/generate", "CONTENT_LENGTH": str(len(body)),
                   "wsgi.input": io.BytesIO(body)}
        replies.append(b"".join(app(environ, lambda status, headers: replies.append(status))))

    for _ in range(2):       # the first request loads the model, the second finds it loaded
        worker = threading.Thread(target=request)
        worker.start()
        worker.join()
    assert replies[0] == "200 OK" and json.loads(replies[1])["done"] and replies[2] == "200 OK"
    assert len(seen) >= 6 and set(seen) == {1}
    models.unload(MODEL, why="test")
