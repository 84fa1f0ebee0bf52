"""xllm-main end to end: the known llama2.c output, the shipped model, the modes and every
bad input (exit code 2, one line on stderr, no traceback)."""
import subprocess
import sys
from importlib.metadata import entry_points

import numpy as np
import pytest
from gguf import GGUFReader

from conftest import KNOWN_IDS, KNOWN_PROMPT, KNOWN_TEXT
from model_factory import random_checkpoint, write_gguf
from xllm import LLM, SamplingParams
from xllm.config import ModelConfig
from xllm.convert import main as convert_main
from xllm.formats import open_checkpoint


def run(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "xllm.cli", *map(str, args)], capture_output=True,
                          text=True, input=stdin, timeout=120)


def assert_one_line_error(result, *needles):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def converted(tmp_path_factory, shared_models):
    out = tmp_path_factory.mktemp("gguf") / "stories260K.gguf"
    assert convert_main([str(shared_models / "stories260K.bin"), "-o", str(out),
                         "--token", str(shared_models / "tok512.bin")]) == 0
    return out


@pytest.mark.parametrize("threads", [None, 1, 2])
def test_known_output_llama2c_checkpoint(shared_models, threads):
    args = ["--weight", shared_models / "stories260K.bin", "--token", shared_models / "tok512.bin",
            "--prompt", KNOWN_PROMPT, "--steps", 64, "--temperature", 0]
    if threads:
        args += ["--threads", threads]
    r = run(*args)
    assert r.returncode == 0, r.stderr
    assert r.stdout == KNOWN_TEXT + "\n"
    assert "tok/s" in r.stderr


@pytest.mark.parametrize("threads", [1, 2])
def test_known_output_converted_gguf(converted, threads):
    r = run("--weight", converted, "--prompt", KNOWN_PROMPT, "--steps", 64, "--temperature", 0,
            "--threads", threads)
    assert r.returncode == 0, r.stderr
    assert r.stdout == KNOWN_TEXT + "\n"


def test_known_ids_through_api(converted):
    llm = LLM(converted, threads=2)
    out = llm.generate(KNOWN_PROMPT, SamplingParams(max_tokens=60, temperature=0))[0]
    assert out.prompt_token_ids + out.token_ids == KNOWN_IDS
    assert out.finish_reason == "length"


def test_converted_file_has_llama_cpp_layout(converted, shared_models):
    r = GGUFReader(str(converted))
    assert r.fields["general.architecture"].contents() == "llama"
    for key in ("llama.context_length", "llama.embedding_length", "llama.block_count",
                "llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv",
                "llama.attention.layer_norm_rms_epsilon", "llama.rope.freq_base",
                "tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.scores",
                "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
        assert key in r.fields, key
    names = {t.name for t in r.tensors}
    assert {"token_embd.weight", "output_norm.weight", "blk.0.attn_q.weight", "blk.4.ffn_down.weight"} <= names
    src = open_checkpoint(shared_models / "stories260K.bin")
    back = open_checkpoint(converted)
    for name, t in src.tensors.items():
        assert np.array_equal(back.tensors[name].data, t.data), name


def test_shipped_model_no_arguments():
    r = run("--temperature", 0, "--steps", 64)
    assert r.returncode == 0, r.stderr
    assert r.stdout == KNOWN_TEXT + "\n"
    r = run("--seed", 7)                                  # the plain no-argument run: a story
    assert r.returncode == 0 and r.stdout.startswith(KNOWN_PROMPT) and len(r.stdout) > 100


def test_seed_reproducible():
    a = run("--seed", 11, "--steps", 80)
    b = run("--seed", 11, "--steps", 80)
    assert a.returncode == 0 and a.stdout == b.stdout


def test_interactive_loop(converted):
    r = run("--weight", converted, "--temperature", 0, "--steps", 64, stdin=f"{KNOWN_PROMPT}\n\nLily\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(">>> " + KNOWN_TEXT + "\n>>> ")
    assert r.stdout.count(">>> ") == 4                    # three lines read, then EOF


def test_prompts_file(converted, tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text(f"{KNOWN_PROMPT}\n\n   \nLily went\n")
    r = run("--weight", converted, "--file", f, "--temperature", 0, "--steps", 64, "--max-seqs", 1)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(KNOWN_TEXT + "\n\nLily went")


def test_console_scripts_installed():
    names = {e.name for e in entry_points(group="console_scripts")}
    assert {"xllm-main", "xllm-convert", "xllm-quant", "xllm-perplexity", "xllm-benchmark",
            "xllm-benchmark-batch"} <= names


# ----------------------------------------------------------------------------- bad input

@pytest.fixture(scope="module")
def tiny_cfg():
    return ModelConfig(dim=32, hidden_dim=64, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=512, max_seq_len=16)


def test_threads_zero():
    assert_one_line_error(run("--threads", 0), "--threads", "'0'")


def test_missing_file():
    assert_one_line_error(run("--weight", "/nonexistent/model.gguf"), "/nonexistent/model.gguf")


def test_truncated_llama2c(shared_models, tmp_path):
    bad = tmp_path / "cut.bin"
    bad.write_bytes((shared_models / "stories260K.bin").read_bytes()[:500000])
    assert_one_line_error(run("--weight", bad, "--token", shared_models / "tok512.bin", "--prompt", "x"),
                          "cut.bin", "truncated")


def test_truncated_gguf(converted, tmp_path):
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(converted.read_bytes()[:700000])
    assert_one_line_error(run("--weight", bad, "--prompt", "x"), "cut.gguf")
    with pytest.raises(ValueError, match="cut.gguf"):
        open_checkpoint(bad)


def test_wrong_magic(tmp_path):
    bad = tmp_path / "junk.gguf"
    bad.write_bytes(b"GGUX" + bytes(100))
    assert_one_line_error(run("--weight", bad, "--prompt", "x"), "junk.gguf", "not a GGUF file")


def test_bad_llama2c_header(shared_models, tmp_path):
    data = bytearray((shared_models / "stories260K.bin").read_bytes())
    data[12:16] = (0).to_bytes(4, "little")            # n_heads = 0
    bad = tmp_path / "heads.bin"
    bad.write_bytes(bytes(data))
    assert_one_line_error(run("--weight", bad, "--token", shared_models / "tok512.bin", "--prompt", "x"),
                          "n_heads = 0")


def test_bad_gguf_header_value(tiny_cfg, tmp_path):
    from dataclasses import replace
    bad_cfg = replace(tiny_cfg, n_kv_heads=3)           # 4 heads cannot share 3 kv heads
    ckpt = random_checkpoint(tiny_cfg)
    path = tmp_path / "kv.gguf"
    write_gguf(path, bad_cfg, ckpt.tensors)
    with pytest.raises(ValueError, match="n_kv_heads = 3"):
        open_checkpoint(path)


def test_missing_tensor(tiny_cfg, tmp_path):
    ckpt = random_checkpoint(tiny_cfg)
    del ckpt.tensors["blk.0.attn_q.weight"]
    path = tmp_path / "missing.gguf"
    write_gguf(path, tiny_cfg, ckpt.tensors)
    with pytest.raises(ValueError, match="missing tensor 'blk.0.attn_q.weight'"):
        open_checkpoint(path)
    assert_one_line_error(run("--weight", path, "--token", "x", "--prompt", "x"), "blk.0.attn_q.weight")


def test_wrong_shape(tiny_cfg, tmp_path):
    from xllm.formats import Tensor
    ckpt = random_checkpoint(tiny_cfg)
    w = ckpt.tensors["blk.0.ffn_down.weight"]
    ckpt.tensors[w.name] = Tensor(w.name, w.ggml_type, w.shape[::-1], np.ascontiguousarray(w.data.T))
    path = tmp_path / "shape.gguf"
    write_gguf(path, tiny_cfg, ckpt.tensors)
    with pytest.raises(ValueError, match=r"'blk.0.ffn_down.weight' has shape \(64, 32\), expected \(32, 64\)"):
        open_checkpoint(path)


def test_vocabulary_model_mismatch(shared_models):
    assert_one_line_error(run("--weight", shared_models / "stories260K.bin", "--token",
                              shared_models / "tokenizer.model", "--prompt", "x"), "32000", "512")


def test_no_tokenizer_for_llama2c(shared_models):
    assert_one_line_error(run("--weight", shared_models / "stories260K.bin", "--prompt", "x"), "tokenizer")


def test_prompt_over_context(shared_models):
    long_prompt = "Once upon a time " * 60                # ~ 240 tokens; aidreams has 128 positions
    r = run("--weight", shared_models / "aidreams260K.bin", "--token", shared_models / "aidreams260K_tok512.bin",
            "--prompt", long_prompt)
    assert_one_line_error(r, "context length 128")
    llm = LLM(shared_models / "aidreams260K.bin", tokenizer=shared_models / "aidreams260K_tok512.bin", threads=1)
    with pytest.raises(ValueError, match="context length 128"):
        llm.generate(long_prompt, SamplingParams(max_tokens=1))


def test_steps_over_context(shared_models):
    assert_one_line_error(run("--steps", 513, "--prompt", "x"), "--steps 513", "512")


def test_bad_sampling_values():
    assert_one_line_error(run("--temperature", "hot"), "--temperature", "'hot'")
    assert_one_line_error(run("--top-k", -1), "--top-k")
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0).validate()


def test_prompt_and_file_exclusive(tmp_path):
    assert_one_line_error(run("--prompt", "x", "--file", tmp_path / "p.txt"), "--prompt", "--file")


@pytest.mark.parametrize("content,needle", [(b"", "no prompts"), (b"\n  \n\n", "no prompts"),
                                            (b"good line\n\xff\xfe bad\n", ":2: not valid UTF-8")])
def test_bad_prompts_file(tmp_path, content, needle):
    f = tmp_path / "p.txt"
    f.write_bytes(content)
    assert_one_line_error(run("--file", f), needle)


def test_more_threads_than_cores_warns():
    from xllm.model import usable_cores
    r = run("--threads", usable_cores() + 1, "--steps", 20, "--temperature", 0)
    assert r.returncode == 0
    assert "warning" in r.stderr and "cores" in r.stderr


# ----------------------------------------------------------------------------- chat

# A template for the TinyStories model: the user's text starts a story, each reply ends with EOS.
STORY_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m.content == 'bad' %}"
                  "{{ raise_exception('no bad words') }}{% endif %}{{ m.content }}"
                  "{% if m.role == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}\n")


@pytest.fixture(scope="module")
def story_template(tmp_path_factory):
    path = tmp_path_factory.mktemp("chat") / "story.jinja"
    path.write_text(STORY_TEMPLATE)
    return path


def slow_run(*args, stdin=None):
    """run() with room for a long greedy story on a loaded machine (a hang guard, not a timing)."""
    return subprocess.run([sys.executable, "-m", "xllm.cli", *map(str, args)], capture_output=True,
                          text=True, input=stdin, timeout=900)


def test_chat_keeps_the_conversation(story_template):
    from xllm.chat import encode_rendered, load_chat_template
    llm = LLM(threads=1)                                   # the shipped model
    template = load_chat_template(llm.checkpoint.path, story_template, llm.tokenizer)

    def reply(messages):                                   # the same turn through the Python API
        ids = encode_rendered(llm.tokenizer, template.render(messages))
        params = SamplingParams(max_tokens=llm.config.max_seq_len - len(ids) + 1, temperature=0)
        return llm.generate([ids], params)[0].text

    first = reply([{"role": "user", "content": KNOWN_PROMPT}])
    # one BOS (the template's): the known llama2.c continuation
    assert first.startswith(KNOWN_TEXT[len(KNOWN_PROMPT):])
    second = reply([{"role": "user", "content": KNOWN_PROMPT}, {"role": "assistant", "content": first},
                    {"role": "user", "content": "Lily"}])
    fresh = reply([{"role": "user", "content": "Lily"}])
    assert second != fresh                                 # the history matters
    for cache in ([], ["--no-prefix-cache"]):   # later turns read the earlier ones' blocks, or not
        r = slow_run("--chat-template", story_template, "--temperature", 0, "--steps", 0, *cache,
                     stdin=f"{KNOWN_PROMPT}\nLily\n/reset\nLily\n")
        assert r.returncode == 0, r.stderr
        assert r.stdout == f">>> {first}\n>>> {second}\n>>> >>> {fresh}\n>>> "
        assert "conversation cleared" in r.stderr and "Traceback" not in r.stderr


def test_chat_errors_keep_the_loop(story_template):
    # --steps bounds the whole conversation: the second turn no longer fits; a template's
    # raise_exception is one line too; /reset starts over
    r = run("--chat-template", story_template, "--temperature", 0, "--steps", 20,
            stdin=f"{KNOWN_PROMPT}\nmore\nbad\n/reset\n{KNOWN_PROMPT}\n")
    assert r.returncode == 0, r.stderr
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(errors) == 2, r.stderr
    assert "conversation is too long" in errors[0] and "/reset" in errors[0]
    assert "story.jinja" in errors[1] and "no bad words" in errors[1]
    replies = r.stdout.split(">>> ")
    assert replies[2:5] == ["", "", ""] and replies[6] == ""    # two refused turns, /reset, EOF
    assert len(replies) == 7 and replies[1] == replies[5] and replies[1].startswith(", there was")
    assert "Traceback" not in r.stderr


def test_chat_template_bad_input(story_template, tmp_path):
    assert_one_line_error(run("--chat-template", story_template, "--prompt", "x"), "--chat-template", "--prompt")
    assert_one_line_error(run("--chat-template", tmp_path / "none.jinja"), "none.jinja")
    bad = tmp_path / "broken.jinja"
    bad.write_text("{% for m in messages %}")
    assert_one_line_error(run("--chat-template", bad, stdin="hi\n"), "broken.jinja", "syntax error")


# ----------------------------------------------------------------------------- --stats-log

def test_stats_log_known_output(tmp_path):
    from xllm.cpu_stats import read_stats_log
    log = tmp_path / "run.tsv"
    proc = subprocess.Popen([sys.executable, "-m", "xllm.cli", "--stats-log", str(log), "--prompt", KNOWN_PROMPT,
                             "--steps", "64", "--temperature", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert out == KNOWN_TEXT + "\n" and "tok/s" in err
    samples = read_stats_log(log).samples
    assert len(samples) >= 2
    assert {s["pid"] for s in samples} == {samples[0]["pid"]} and samples[0]["pid"] != proc.pid   # the child
    assert samples[-1]["state"] == "Z" and samples[-1]["utime"] + samples[-1]["stime"] > 0
    r = subprocess.run([sys.executable, "-m", "xllm.cpu_stats", str(log)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "average CPU: " in r.stdout, r.stderr


def test_stats_log_interactive_and_errors(converted, tmp_path):
    r = run("--stats-log", tmp_path / "i.tsv", "--weight", converted, "--temperature", 0, "--steps", 64,
            stdin=f"{KNOWN_PROMPT}\n\nLily\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(">>> " + KNOWN_TEXT + "\n>>> ") and r.stdout.count(">>> ") == 4
    # the child's error: one line, its exit code
    assert_one_line_error(run("--stats-log", tmp_path / "e.tsv", "--weight", "/nonexistent/m.gguf"),
                          "/nonexistent/m.gguf")
    assert_one_line_error(run("--stats-log", tmp_path / "e.tsv", "--steps", 513, "--prompt", "x"), "--steps 513")
    assert_one_line_error(run("--stats-log", tmp_path / "no" / "s.tsv"), "no/s.tsv", "cannot write the stats log")


@pytest.mark.parametrize("stats", [False, True])
@pytest.mark.parametrize("after_a_prompt", [False, True])
def test_ctrl_c_at_the_prompt(converted, tmp_path, stats, after_a_prompt):
    """Ctrl-C the moment the prompt is written (the race input() loses: line_reader.py), and
    at the next prompt, when the OpenMP workers exist (they must not take the signal)."""
    import os
    import signal
    args = [sys.executable, "-m", "xllm.cli", "--weight", str(converted), "--threads", "2", "--steps", "8"]
    if stats:
        args += ["--stats-log", str(tmp_path / "c.tsv")]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        assert proc.stdout.read(4) == b">>> "                   # waiting for input
        if after_a_prompt:
            proc.stdin.write(b"Once upon a time\n")
            proc.stdin.flush()
            out = b""
            while not out.endswith(b">>> "):
                out += proc.stdout.read(1)
        os.killpg(proc.pid, signal.SIGINT)                     # Ctrl-C: the whole process group
        proc.wait(timeout=120)     # stdin stays open: closing it now could race the signal as an EOF
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert err.decode().strip().splitlines()[-1] == "xllm-main: interrupted"


def test_stats_log_child_killed(converted, tmp_path):
    import os
    import signal
    from xllm.cpu_stats import read_stats_log
    log = tmp_path / "k.tsv"
    proc = subprocess.Popen([sys.executable, "-m", "xllm.cli", "--weight", str(converted), "--stats-log", str(log)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.read(4) == b">>> "                   # the child is up, the log started
        child = int(log.read_text().splitlines()[2].split("\t")[2])
        os.kill(child, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGKILL
    lines = err.decode().strip().splitlines()
    assert lines == [f"xllm-main: error: the inference process (pid {child}) was killed by SIGKILL"]
    assert read_stats_log(log).samples[-1]["pid"] == child


@pytest.mark.parametrize("stats", [False, True])
def test_no_stdin_at_all_is_eof(converted, tmp_path, stats):
    import shlex
    extra = f"--stats-log {shlex.quote(str(tmp_path / 's.tsv'))}" if stats else ""
    r = subprocess.run(["sh", "-c", f"exec {shlex.quote(sys.executable)} -m xllm.cli --weight "
                        f"{shlex.quote(str(converted))} {extra} <&-"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr.strip() == "" and r.stdout == "", r.stderr


def test_stats_log_sigterm_reaches_the_child(converted, tmp_path):
    import os
    import signal
    proc = subprocess.Popen([sys.executable, "-m", "xllm.cli", "--weight", str(converted), "--stats-log",
                             str(tmp_path / "t.tsv")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert proc.stdout.read(4) == b">>> "
        os.kill(proc.pid, signal.SIGTERM)                      # the parent only: forwarded
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM
    assert len(err.decode().strip().splitlines()) == 1 and "killed by SIGTERM" in err.decode()


def test_worker_threads_block_process_signals():
    """numpy's OpenBLAS workers (started at import) and the OpenMP team leave the process's
    signals to the main thread, whose blocked read() only a signal to itself interrupts."""
    code = """
import os, signal
import xllm
import numpy as np
from xllm import _kernels
w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
_kernels.matmul(w, 0, np.ones((4, 64), np.float32), threads=2)
main = os.getpid()
for task in os.listdir("/proc/self/task"):
    status = open(f"/proc/self/task/{task}/status").read()
    blocked = int(status.split("SigBlk:")[1].split()[0], 16)
    sigint_blocked = bool(blocked & (1 << (signal.SIGINT - 1)))
    print(task, int(task) == main, sigint_blocked)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()]
    assert len(rows) >= 2                                  # the main thread and a worker at least
    for task, is_main, sigint_blocked in rows:
        assert sigint_blocked == ("False" if is_main == "True" else "True"), rows


def test_no_prefix_cache_reaches_the_engine(monkeypatch):
    import xllm.cli
    import xllm.llm
    seen = {}

    class Built(Exception):
        pass

    def recording_llm(*args, **kwargs):
        seen.update(kwargs)
        raise Built
    monkeypatch.setattr(xllm.llm, "LLM", recording_llm)
    for flags, expected in (([], True), (["--no-prefix-cache"], False)):
        with pytest.raises(Built):
            xllm.cli.run(xllm.cli.build_parser().parse_args(flags + ["--prompt", "x"]))
        assert seen["prefix_cache"] is expected
