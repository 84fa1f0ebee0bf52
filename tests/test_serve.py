"""xllm-serve live on a free loopback port, driven by the official openai client: results
equal LLM.generate / LLM.chat, 32 concurrent streams, disconnects free their blocks,
OpenAI-style errors, the engine process dying."""
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from xllm import LLM, SamplingParams
from xllm.engine import DEFAULT_MODEL

from model_factory import random_weights, stored, write_gguf

MODEL = "stories260K.gguf"
TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")
PROMPTS = ["Once upon a time", "The little dog", "Tom and Mia went to the park", "One day",
           "Lily saw a bird", "The sun was hot", "Ben had a red car", "There was a big tree"]
TIMEOUT = 120


class Server:
    def __init__(self, proc, url, engine_pid):
        self.proc, self.url, self.engine_pid = proc, url, engine_pid

    def client(self, api_key="none", **kw):
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=TIMEOUT, **kw)

    def get(self, path, **kw):
        return httpx.get(self.url + path, timeout=TIMEOUT, **kw)

    def post(self, path, **kw):
        return httpx.post(self.url + path, timeout=TIMEOUT, **kw)

    def metrics(self) -> dict:
        out = {}
        for fam in text_string_to_metric_families(self.get("/metrics").text):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def metric(self, name, **labels):
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)


def start_server(*args) -> Server:
    """xllm-serve --port 0 as a subprocess; its address from its first stderr line."""
    cmd = [sys.executable, "-m", "xllm.serve.cli", "--port", "0", *map(str, args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    try:
        line = lines.get(timeout=TIMEOUT)
    except queue.Empty:
        proc.kill()
        raise RuntimeError("xllm-serve did not start") from None
    if "serving" not in line:
        proc.kill()
        raise RuntimeError(f"xllm-serve failed: {line}")
    url = line.split(" on ")[1].split()[0]
    engine_pid = int(line.rsplit("engine pid ", 1)[1].rstrip(")\n"))
    server = Server(proc, url, engine_pid)
    server.lines = lines                                  # the rest of its stderr
    deadline = time.monotonic() + TIMEOUT
    while server.get("/health").status_code != 200:
        assert time.monotonic() < deadline, "server never became healthy"
        time.sleep(0.1)
    return server


def stop_server(server: Server) -> None:
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait(timeout=20)
    try:
        os.kill(server.engine_pid, signal.SIGKILL)      # should be gone already
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def template_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tmpl") / "simple.jinja"
    path.write_text(TEMPLATE)
    return path


@pytest.fixture(scope="module")
def server(template_file):
    # one engine thread: on a loaded machine an OpenMP team waits for its slowest thread every step
    s = start_server("--weight", DEFAULT_MODEL, "--threads", 1, "--max-seqs", 16, "--chat-template", template_file)
    yield s
    stop_server(s)


@pytest.fixture(scope="module")
def llm(template_file):
    return LLM(DEFAULT_MODEL, threads=1, chat_template=template_file)


def greedy(n):
    return SamplingParams(max_tokens=n, temperature=0.0)


# ----------------------------------------------------------------------------- results

def test_completions_equal_generate(server, llm):
    client = server.client()
    for prompt in PROMPTS[:4]:
        want = llm.generate(prompt, greedy(40))[0]
        got = client.completions.create(model=MODEL, prompt=prompt, max_tokens=40, temperature=0)
        assert got.object == "text_completion" and got.model == MODEL
        assert got.choices[0].text == want.text
        assert got.choices[0].finish_reason == ("length" if want.finish_reason == "length" else "stop")
        assert got.usage.prompt_tokens == len(want.prompt_token_ids)
        assert got.usage.completion_tokens == len(want.token_ids)
        stream = client.completions.create(model=MODEL, prompt=prompt, max_tokens=40, temperature=0, stream=True)
        chunks = list(stream)
        assert "".join(c.choices[0].text for c in chunks) == want.text
        assert chunks[-1].choices[0].finish_reason is not None


def test_chat_equals_llm_chat(server, llm):
    client = server.client()
    messages = [{"role": "user", "content": "Tell me a story."}]
    want = llm.chat(messages, greedy(30))
    got = client.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=30, temperature=0)
    assert got.object == "chat.completion"
    assert got.choices[0].message.role == "assistant"
    assert got.choices[0].message.content == want.text
    assert got.usage.completion_tokens == len(want.token_ids)
    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=30, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want.text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(want.token_ids)
    assert chunks[-1].usage.prompt_tokens == got.usage.prompt_tokens


def test_32_concurrent_streams_each_get_their_alone_output(server, llm):
    jobs = [(PROMPTS[i % len(PROMPTS)], i) for i in range(32)]
    want = [llm.generate(p, SamplingParams(max_tokens=48, temperature=0.8, top_p=0.95, seed=seed))[0].text
            for p, seed in jobs]
    client = server.client()

    def run(job):
        prompt, seed = job
        stream = client.completions.create(model=MODEL, prompt=prompt, max_tokens=48, temperature=0.8,
                                           top_p=0.95, seed=seed, stream=True)
        return "".join(c.choices[0].text for c in stream)
    with ThreadPoolExecutor(32) as pool:
        got = list(pool.map(run, jobs, timeout=5 * TIMEOUT))     # a bound, not a speed test
    assert got == want
    assert server.metric("xllm_kv_blocks_used") == 0


def test_stop_n_logprobs_echo(server, llm):
    client = server.client()
    full = llm.generate(PROMPTS[0], greedy(40))[0].text
    got = client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=40, temperature=0,
                                    stop=["girl named"], echo=True)
    assert got.choices[0].text == PROMPTS[0] + full[:full.index("girl named")]
    assert got.choices[0].finish_reason == "stop"
    stream = client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=40, temperature=0,
                                       stop="girl named", stream=True)
    pieces = [c.choices[0].text for c in stream]
    assert "".join(pieces) == full[:full.index("girl named")]
    # n completions of a seeded request: the first is the request alone
    alone = llm.generate(PROMPTS[1], SamplingParams(max_tokens=20, temperature=1.0, seed=5))[0].text
    many = client.completions.create(model=MODEL, prompt=[PROMPTS[1], PROMPTS[2]], max_tokens=20,
                                     temperature=1.0, seed=5, n=3)
    assert sorted(c.index for c in many.choices) == list(range(6))
    assert many.choices[0].text == alone
    # logprobs: the model's, as LLM.generate gives them
    ref = llm.generate(PROMPTS[2], SamplingParams(max_tokens=8, temperature=0.0, logprobs=3))[0].outputs[0]
    lp = client.completions.create(model=MODEL, prompt=PROMPTS[2], max_tokens=8, temperature=0, logprobs=3)
    lps = lp.choices[0].logprobs
    assert lps.token_logprobs == pytest.approx([t.logprob for t in ref.logprobs])
    assert [len(t) for t in lps.top_logprobs] == [3] * len(ref.logprobs)
    # echo + logprobs: the prompt's tokens after BOS with their logprobs, then the generated ones
    ids = llm.tokenizer.encode(PROMPTS[2])
    ref = llm.generate(PROMPTS[2], SamplingParams(max_tokens=4, temperature=0.0, logprobs=1, prompt_logprobs=1))[0]
    want = [t.logprob for t in ref.prompt_logprobs + ref.outputs[0].logprobs]
    for stream in (False, True):
        got = client.completions.create(model=MODEL, prompt=PROMPTS[2], max_tokens=4, temperature=0, logprobs=1,
                                        echo=True, stream=stream)
        chunks = list(got) if stream else [got]
        assert "".join(c.choices[0].text for c in chunks) == PROMPTS[2] + ref.text
        lps = [v for c in chunks for v in c.choices[0].logprobs.token_logprobs]
        assert lps == pytest.approx(want)
        assert [t for c in chunks for t in c.choices[0].logprobs.tokens][:len(ids) - 1] == \
            [llm.tokenizer.vocab.pieces[i].replace("\u2581", " ") for i in ids[1:]]
    score = client.completions.create(model=MODEL, prompt=PROMPTS[2], max_tokens=0, logprobs=0, echo=True)
    assert score.choices[0].text == PROMPTS[2] and score.usage.completion_tokens == 0
    assert score.choices[0].logprobs.token_logprobs == pytest.approx(want[:len(ids) - 1])
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=5, temperature=0, logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob >= t.logprob for t in content)
    # penalties reach the sampler
    pen = llm.generate(PROMPTS[0], SamplingParams(max_tokens=30, temperature=0.0, presence_penalty=1.5,
                                                  frequency_penalty=0.5))[0].text
    got = client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=30, temperature=0,
                                    presence_penalty=1.5, frequency_penalty=0.5)
    assert got.choices[0].text == pen


def test_models_tokenize_detokenize_health(server, llm):
    models = server.client().models.list()
    assert [m.id for m in models.data] == [MODEL]
    r = server.post("/tokenize", json={"model": MODEL, "prompt": PROMPTS[0]}).json()
    assert r["tokens"] == llm.tokenizer.encode(PROMPTS[0]) and r["count"] == len(r["tokens"])
    assert r["max_model_len"] == llm.config.max_seq_len
    r = server.post("/detokenize", json={"model": MODEL, "tokens": llm.tokenizer.encode(PROMPTS[0])}).json()
    assert r["prompt"] == PROMPTS[0]
    h = server.get("/health")
    assert h.status_code == 200 and h.json()["engine_pid"] == server.engine_pid


def test_metrics_count_tokens_and_requests(server, llm):
    before = server.metrics()
    server.client().completions.create(model=MODEL, prompt=PROMPTS[3], max_tokens=7, temperature=0,
                                       extra_body={"ignore_eos": True})
    after = server.metrics()

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)
    assert delta("xllm_generation_tokens_total") == 7
    assert delta("xllm_prompt_tokens_total") == len(llm.tokenizer.encode(PROMPTS[3]))
    assert delta("xllm_http_requests_total", endpoint="/v1/completions", status="200") == 1
    assert delta("xllm_request_finished_total", reason="length") == 1
    assert delta("xllm_time_to_first_token_seconds_count") == 1
    assert delta("xllm_time_per_output_token_seconds_count") == 6
    for name in ("xllm_num_requests_running", "xllm_num_requests_waiting", "xllm_kv_blocks_used"):
        assert (name, ()) in after
    assert after[("xllm_kv_blocks_total", ())] > 0
    assert after[("xllm_engine_resident_memory_bytes", ())] > 0


def test_repeated_prompts_report_cached_tokens(server, llm):
    """The prefix cache: a repeated prompt's full blocks (but the one of its last token) are
    cached_tokens in usage (plain, streamed and chat), counted in /metrics; the text is
    the uncached one."""
    client = server.client()
    prompt = "The prefix cache test: " + " ".join(PROMPTS)
    n = len(llm.tokenizer.encode(prompt))
    want = llm.generate(prompt, greedy(5))[0].text
    before = server.metric("xllm_prompt_tokens_cached_total")
    first = client.completions.create(model=MODEL, prompt=prompt, max_tokens=5, temperature=0)
    second = client.completions.create(model=MODEL, prompt=prompt, max_tokens=5, temperature=0)
    assert first.choices[0].text == second.choices[0].text == want
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details.cached_tokens == (n - 1) // 16 * 16 > 0
    chunks = list(client.completions.create(model=MODEL, prompt=prompt, max_tokens=5, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == (n - 1) // 16 * 16
    assert server.metric("xllm_prompt_tokens_cached_total") - before == 2 * ((n - 1) // 16 * 16)
    assert server.metric("xllm_kv_blocks_cached") > 0
    messages = [{"role": "system", "content": "You tell stories. " * 6}, {"role": "user", "content": "Go on."}]
    chat = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0)
    assert chat.usage.prompt_tokens_details.cached_tokens == 0
    messages += [{"role": "assistant", "content": chat.choices[0].message.content},
                 {"role": "user", "content": "And then?"}]
    again = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0)
    assert again.usage.prompt_tokens_details.cached_tokens >= chat.usage.prompt_tokens // 16 * 16 - 16 > 0
    assert again.choices[0].message.content == llm.chat(messages, greedy(6)).text


# ----------------------------------------------------------------------------- errors

def error_of(response, status):
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert "Traceback" not in response.text
    return err


def test_bad_requests_get_openai_errors(server):
    url = "/v1/completions"
    err = error_of(server.post(url, content=b'{"model": "x", ', headers={"content-type": "application/json"}), 400)
    assert "not valid JSON" in err["message"]
    err = error_of(server.post(url, json={"model": MODEL, "prompt": "a", "temperature": "hot"}), 400)
    assert err["param"] == "temperature"
    err = error_of(server.post(url, json={"model": MODEL, "prompt": "a", "n": 0}), 400)
    assert err["param"] == "n"
    err = error_of(server.post(url, json={"model": MODEL}), 400)
    assert err["param"] == "prompt"
    err = error_of(server.post(url, json={"model": MODEL, "prompt": [1, 99999]}), 400)
    assert "99999" in err["message"]
    err = error_of(server.post(url, json={"model": MODEL, "prompt": "Once upon a time", "max_tokens": 600}), 400)
    assert "5 tokens" in err["message"] and "600" in err["message"] and "512" in err["message"]
    assert err["param"] == "max_tokens"
    err = error_of(server.post("/v1/chat/completions", json={"model": MODEL, "messages": []}), 400)
    assert err["param"] == "messages"
    err = error_of(server.post(url, json={"model": "gpt-4", "prompt": "a"}), 404)
    assert err["code"] == "model_not_found" and "gpt-4" in err["message"]
    with pytest.raises(openai.NotFoundError):
        server.client().completions.create(model="gpt-4", prompt="a")
    with pytest.raises(openai.BadRequestError, match="context length 512"):
        server.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                max_completion_tokens=1000)
    error_of(server.get("/v1/nothing-here"), 404)
    assert server.metric("xllm_http_requests_total", endpoint="other", status="404") >= 1
    assert server.metric("xllm_http_requests_total", endpoint="/v1/completions", status="400") >= 6


@pytest.fixture(scope="module")
def stats_log(tmp_path_factory):
    return tmp_path_factory.mktemp("stats") / "engine.tsv"


@pytest.fixture(scope="module")
def keyed_server(stats_log):
    """--api-key, --stats-log, --no-prefix-cache and the shipped model's own (absent) chat template."""
    s = start_server("--weight", DEFAULT_MODEL, "--threads", 1, "--api-key", "sekrit", "--stats-log", stats_log,
                     "--no-prefix-cache")
    yield s
    stop_server(s)


def test_api_key_and_missing_template(keyed_server):
    s = keyed_server
    err = error_of(s.post("/v1/completions", json={"model": MODEL, "prompt": "a"}), 401)
    assert err["code"] == "invalid_api_key"
    error_of(s.post("/v1/completions", json={"model": MODEL, "prompt": "a"},
                    headers={"Authorization": "Bearer wrong"}), 401)
    with pytest.raises(openai.AuthenticationError):
        s.client(api_key="wrong").completions.create(model=MODEL, prompt="a", max_tokens=2)
    ok = s.client(api_key="sekrit").completions.create(model=MODEL, prompt="a", max_tokens=2)
    assert ok.usage.completion_tokens >= 1
    for _ in range(2):                            # --no-prefix-cache: a repeated prompt is computed again
        again = s.client(api_key="sekrit").completions.create(model=MODEL, prompt=" ".join(PROMPTS), max_tokens=1)
        assert again.usage.prompt_tokens > 16 and again.usage.prompt_tokens_details.cached_tokens == 0
    assert s.get("/health").status_code == 200 and s.get("/metrics").status_code == 200
    with pytest.raises(openai.BadRequestError, match="no chat template"):
        s.client(api_key="sekrit").chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])


# ----------------------------------------------------------------------------- a slower model

@pytest.fixture(scope="module")
def slow_model(tmp_path_factory):
    """A random F16 model large enough (tens of ms a token) that a stream is still running
    while the test acts on it, with the shipped model's vocabulary and a long context."""
    from xllm.config import ModelConfig
    from xllm.formats import F16, open_checkpoint
    base = open_checkpoint(DEFAULT_MODEL)
    cfg = ModelConfig(dim=512, hidden_dim=1536, n_layers=8, n_heads=8, n_kv_heads=8, vocab_size=512,
                      max_seq_len=4096, head_dim=64)
    path = tmp_path_factory.mktemp("slow") / "slow.gguf"
    write_gguf(path, cfg, stored(random_weights(cfg), F16), base.vocab)
    return path


@pytest.fixture()
def slow_server(slow_model):
    s = start_server("--weight", slow_model, "--threads", 1, "--max-seqs", 1, "--max-waiting", 1)
    yield s
    stop_server(s)


LONG = {"max_tokens": 4000, "temperature": 0, "extra_body": {"ignore_eos": True}}


def wait_for(cond, what):
    deadline = time.monotonic() + TIMEOUT
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_disconnect_frees_blocks_and_waiting_limit(slow_server):
    s = slow_server
    name = "slow.gguf"
    client = s.client()
    err = error_of(s.post("/v1/completions", json={"model": name, "prompt": "a", "n": 2, "max_tokens": 2}), 400)
    assert err["param"] == "n" and "--max-waiting 1" in err["message"]
    first = client.completions.create(model=name, prompt="Once upon a time", stream=True, **LONG)
    next(iter(first))                                           # running, holding blocks
    assert s.metric("xllm_kv_blocks_used") > 0 and s.metric("xllm_num_requests_running") == 1
    second = client.completions.create(model=name, prompt="One day", stream=True, **LONG)
    wait_for(lambda: s.metric("xllm_num_requests_waiting") == 1, "the second request to wait")
    r = s.post("/v1/completions", json={"model": name, "prompt": "a", "max_tokens": 2})
    err = error_of(r, 503)
    assert r.headers["retry-after"] == "1" and "--max-waiting 1" in err["message"]
    with pytest.raises(openai.InternalServerError):
        client.completions.create(model=name, prompt="a", max_tokens=2)
    first.close()                                               # the client goes away mid-stream
    wait_for(lambda: s.metric("xllm_request_finished_total", reason="abort") == 1, "the abort")
    # the second request takes the freed place; closing it frees every block
    chunk = next(iter(second))
    assert chunk.choices[0].finish_reason is None
    second.close()
    wait_for(lambda: s.metric("xllm_kv_blocks_used") == 0, "the blocks to be freed")
    assert s.metric("xllm_request_finished_total", reason="abort") == 2
    assert s.metric("xllm_num_requests_running") == 0 and s.metric("xllm_num_requests_waiting") == 0
    # a non-streaming client that leaves is aborted too
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(s.url + "/v1/completions", timeout=1.0,
                   json={"model": name, "prompt": "a", "max_tokens": 4000, "ignore_eos": True})
    wait_for(lambda: s.metric("xllm_request_finished_total", reason="abort") == 3, "the third abort")
    wait_for(lambda: s.metric("xllm_kv_blocks_used") == 0, "the blocks to be freed")


def test_engine_death_ends_requests_with_an_error(slow_server):
    s = slow_server
    client = s.client()
    stream = client.completions.create(model="slow.gguf", prompt="Once upon a time", stream=True, **LONG)
    it = iter(stream)
    next(it)
    with ThreadPoolExecutor(1) as pool:          # a non-streaming request waiting its turn
        waiting = pool.submit(client.completions.create, model="slow.gguf", prompt="One day", max_tokens=50)
        wait_for(lambda: s.metric("xllm_num_requests_waiting") == 1, "the second request to wait")
        os.kill(s.engine_pid, signal.SIGKILL)
        with pytest.raises(openai.APIError, match="engine"):
            for _ in it:
                pass
        with pytest.raises(openai.InternalServerError, match="engine"):
            waiting.result(timeout=TIMEOUT)
    wait_for(lambda: s.get("/health").status_code == 503, "/health to report the engine")
    assert "exited" in s.get("/health").json()["message"]
    err = error_of(s.post("/v1/completions", json={"model": "slow.gguf", "prompt": "a"}), 503)
    assert err["code"] == "engine_dead"
    assert s.metric("xllm_engine_alive") == 0
    assert s.proc.poll() is None                # the front end still answers


def test_stats_log_follows_the_engine_process(keyed_server, stats_log):
    """--stats-log samples the engine process (not the front end) once a second."""
    from xllm.cpu_stats import read_stats_log, summarize
    s = keyed_server
    s.client(api_key="sekrit").completions.create(model=MODEL, prompt="Once upon a time", max_tokens=200,
                                                  extra_body={"ignore_eos": True})
    wait_for(lambda: len(stats_log.read_text().splitlines()) >= 4, "two samples in the stats log")
    log = read_stats_log(stats_log)
    assert {row["pid"] for row in log.samples} == {s.engine_pid}
    assert all(row["state"] in "RSD" and row["vsize"] > 0 for row in log.samples)
    assert log.samples[-1]["utime"] + log.samples[-1]["stime"] > 0          # it loaded and ran a model
    summary = summarize(log)
    assert summary["pid"] == s.engine_pid and summary["samples"] == len(log.samples)
    assert 0 <= summary["cpu_percent"] <= 110 * os.cpu_count()
    assert summary["policies"] == [0] and summary["max_threads"] >= 1       # SCHED_OTHER


# ----------------------------------------------------------------------------- the command line

def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "xllm.serve.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=TIMEOUT)


def test_bad_command_lines_exit_2_with_one_line(tmp_path):
    import socket
    cases = [(("--weight", tmp_path / "missing.gguf"), "missing.gguf: no such model file"),
             (("--port", "99999"), "99999"),
             (("--max-seqs", "0"), "--max-seqs"),
             (("--chat-template", tmp_path / "none.jinja"), "none.jinja")]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        cases.append((("--port", taken.getsockname()[1]), f"cannot listen on 127.0.0.1:{taken.getsockname()[1]}"))
        for args, needle in cases:
            r = run_cli(*args)
            assert r.returncode == 2, (args, r.stderr)
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("xllm-serve: error:") and needle in lines[0], (args, r.stderr)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_signal_shuts_down_cleanly(sig, code):
    """Ctrl-C: "interrupted" and 130, as every xllm CLI; SIGTERM: a requested shutdown, 0;
    either way the engine process is stopped first and nothing else is printed."""
    server = start_server()
    server.proc.send_signal(sig)
    try:
        assert server.proc.wait(timeout=60) == code
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{server.engine_pid}") and time.monotonic() < deadline:
            time.sleep(0.05)                              # the engine exits with its front end
        assert not os.path.exists(f"/proc/{server.engine_pid}")
    finally:
        stop_server(server)
    rest = []
    while not server.lines.empty():
        rest.append(server.lines.get())
    time.sleep(0.2)
    while not server.lines.empty():
        rest.append(server.lines.get())
    assert rest == (["xllm-serve: interrupted\n"] if sig == signal.SIGINT else []), rest
