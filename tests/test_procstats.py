"""/proc/<pid>/stat parsing, the stats log of a live process, and xllm-cpu-stats on logs whose
numbers are known."""
import os
import subprocess
import sys
import threading

import pytest

from xllm.cpu_stats import main as cpu_stats_main, read_stats_log, summarize
from xllm.procstats import CLK_TCK, COLUMNS, MAGIC, StatsLogger, parse_proc_stat, read_proc_stat

# A child that burns `cpu_s` seconds of its own CPU time (not wall time: the machine is shared).
BUSY = "import time\nwhile time.process_time() < {cpu_s}: pass\n"


def spawn(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "xllm.cpu_stats", *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def assert_one_line_error(result, *needles):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("xllm-cpu-stats: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


# ----------------------------------------------------------------------------- /proc/<pid>/stat

def test_parse_comm_with_spaces_and_parentheses():
    rest = " ".join(str(i) for i in range(4, 53))      # fields 4..52 hold their own numbers
    stat = parse_proc_stat(f"77 (a) (b) c) S {rest}\n")
    assert stat["pid"] == 77 and stat["comm"] == "a) (b) c" and stat["state"] == "S"
    assert (stat["ppid"], stat["utime"], stat["stime"], stat["nice"], stat["num_threads"]) == (4, 14, 15, 19, 20)
    assert (stat["vsize"], stat["task_cpu"], stat["policy"]) == (23, 39, 41)
    assert stat["utime_s"] == 14 / CLK_TCK and stat["stime_s"] == 15 / CLK_TCK


@pytest.mark.parametrize("text,needle", [("", "expected 'pid (comm)"), ("12 (x S 1 2", "expected 'pid (comm)"),
                                         ("x (sh) S 1 2 3", "pid 'x'"), ("12 (sh) S 1 2 3", "fields"),
                                         ("12 (sh) S " + "1 " * 10 + "u " + "1 " * 40, "field 14 (utime) = 'u'")])
def test_parse_malformed(text, needle):
    with pytest.raises(ValueError, match="/proc/<pid>/stat") as info:
        parse_proc_stat(text)
    assert needle in str(info.value)


def test_read_real_process_with_odd_name():
    # the child renames itself (comm holds spaces and parentheses), then waits for stdin
    child = subprocess.Popen([sys.executable, "-c", "import sys\nopen('/proc/self/comm', 'w').write('a) (b c')\n"
                              "print('ok', flush=True)\nsys.stdin.read()\n"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"ok\n"        # renamed
        stat = read_proc_stat(child.pid)
        assert stat["comm"] == "a) (b c"
        assert stat["pid"] == child.pid and stat["ppid"] == os.getpid()
        assert stat["state"] in "RSD" and stat["vsize"] > 0 and stat["rss"] > 0
        assert stat["num_threads"] >= 1 and 0 <= stat["task_cpu"] < 4096
        assert stat["policy"] == os.sched_getscheduler(child.pid) and stat["nice"] == os.getpriority(
            os.PRIO_PROCESS, child.pid)
    finally:
        child.stdin.close()
        child.stdout.close()
        child.wait()
    with pytest.raises(ProcessLookupError, match=f"/proc/{child.pid}/stat"):
        read_proc_stat(child.pid)


# ----------------------------------------------------------------------------- StatsLogger

def test_log_of_a_busy_child(tmp_path):
    path = tmp_path / "stats.tsv"
    child = spawn(BUSY.format(cpu_s=0.6))
    logger = StatsLogger(child.pid, path, interval=0.05).start()
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)   # exited, not reaped: final times readable
    logger.stop()
    assert child.wait() == 0
    text = path.read_text()
    lines = text.splitlines()
    assert lines[0] == f"{MAGIC} clk_tck={CLK_TCK} page_size={os.sysconf('SC_PAGE_SIZE')}"
    assert lines[1].split("\t") == list(COLUMNS)
    log = read_stats_log(path)
    samples = log.samples
    assert len(samples) >= 3 and logger.samples == len(samples)
    assert {s["pid"] for s in samples} == {child.pid}
    assert all(len(s["state"]) == 1 and s["state"] in "RSDZ" for s in samples)
    assert samples[-1]["state"] == "Z"                        # the sample after its exit
    assert samples[0]["vsize"] > 0 and samples[0]["rss"] > 0
    assert samples[-1]["utime"] > samples[0]["utime"]          # it burned CPU in user mode
    assert (samples[-1]["utime"] + samples[-1]["stime"]) / CLK_TCK >= 0.55
    assert all(b["elapsed"] > a["elapsed"] and b["time"] >= a["time"] for a, b in zip(samples, samples[1:]))
    for s in samples:
        assert s["utime_s"] == pytest.approx(s["utime"] / CLK_TCK, abs=1e-6)
    summary = summarize(log)
    assert 0 < summary["cpu_percent"] <= 100 * (os.cpu_count() or 1) + 1


def test_logger_ends_by_itself_when_the_process_is_gone(tmp_path):
    child = spawn(BUSY.format(cpu_s=0.05))
    logger = StatsLogger(child.pid, tmp_path / "s.tsv", interval=0.02).start()
    child.wait()                                     # reaped: /proc/<pid> disappears
    logger._thread.join(timeout=60)                  # a hang guard, not a timing check
    assert not logger._thread.is_alive()
    logger.stop()                                    # still fine afterwards
    assert logger.samples >= 1


def test_logger_bad_path_and_interval(tmp_path):
    with pytest.raises(OSError, match="nodir/s.tsv: cannot write the stats log"):
        StatsLogger(os.getpid(), tmp_path / "nodir" / "s.tsv").start()
    with pytest.raises(ValueError, match="interval"):
        StatsLogger(os.getpid(), tmp_path / "s.tsv", interval=0)


def test_logger_on_this_process_in_a_thread(tmp_path):
    # the sampling thread must not disturb (or be disturbed by) work in other threads
    path = tmp_path / "self.tsv"
    with StatsLogger(os.getpid(), path, interval=0.01) as logger:
        t = threading.Thread(target=lambda: sum(range(2_000_000)))
        t.start()
        t.join()
    assert logger.samples >= 2 and read_stats_log(path).samples[-1]["pid"] == os.getpid()


# ----------------------------------------------------------------------------- xllm-cpu-stats

def write_log(path, rows, clk_tck=100, extra_column=False):
    header = list(COLUMNS) + (["future"] if extra_column else [])
    lines = [f"{MAGIC} clk_tck={clk_tck} page_size=4096", "\t".join(header)]
    for elapsed, utime, stime, state, vsize, cpu in rows:
        values = {"time": f"{1764580000 + elapsed:.6f}", "elapsed": f"{elapsed:.6f}", "pid": "4242",
                  "state": state, "policy": "0", "nice": "5", "vsize": str(vsize), "task_cpu": str(cpu),
                  "utime": str(utime), "stime": str(stime), "utime_s": f"{utime / clk_tck:.6f}",
                  "stime_s": f"{stime / clk_tck:.6f}", "num_threads": "3", "rss": str(vsize // 4),
                  "future": "x"}
        lines.append("\t".join(values[c] for c in header))
    path.write_text("\n".join(lines) + "\n")
    return path


ROWS = [(0, 0, 0, "R", 1 << 30, 0), (1, 50, 10, "R", 2 << 30, 1), (2, 150, 20, "S", 3 << 30, 1),
        (4, 300, 40, "Z", 0, 0)]


@pytest.mark.parametrize("extra_column", [False, True])
def test_cpu_stats_exact_average(tmp_path, extra_column):
    path = write_log(tmp_path / "run.tsv", ROWS, extra_column=extra_column)
    r = run_cli(path)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    # (300 + 40 ticks) / 100 ticks/s = 3.4 s of CPU over 4 s of wall time
    assert "average CPU: 85.00 % of one core\n" in r.stdout
    assert "user: 75.00 %, system: 10.00 %\n" in r.stdout
    assert "samples: 4 over 4.000 s\n" in r.stdout and "pid: 4242\n" in r.stdout
    assert "CPU time: 3.00 s user + 0.40 s system\n" in r.stdout
    assert "peak vsize: 3072.0 MiB, peak rss: 768.0 MiB\n" in r.stdout
    assert "states: R 2, S 1, Z 1\n" in r.stdout and "CPUs: 0, 1\n" in r.stdout
    assert "policy: 0 (SCHED_OTHER); nice: 5\n" in r.stdout


def test_cpu_stats_other_clock_rate_and_two_cores(tmp_path):
    # clk_tck from the file, not this machine: 2 s of ticks at 1000/s per 1 s of wall = 200 %
    path = write_log(tmp_path / "k.tsv", [(10, 0, 0, "R", 1, 0), (11, 1500, 500, "R", 1, 1)], clk_tck=1000)
    s = summarize(read_stats_log(path))
    assert s["cpu_percent"] == 200.0 and s["user_percent"] == 150.0 and s["wall_s"] == 1.0
    assert cpu_stats_main([str(path)]) == 0


def corrupt(tmp_path, name, transform):
    good = write_log(tmp_path / "good.tsv", ROWS).read_text()
    bad = tmp_path / name
    out = transform(good)
    bad.write_bytes(out if isinstance(out, bytes) else out.encode())
    return bad


@pytest.mark.parametrize("transform,needles", [
    (lambda t: "", ["empty file"]),
    (lambda t: "hello\nworld\n", [":1: not an xllm stats log", "'hello'"]),
    (lambda t: t[:-7], [":6: truncated", "no newline"]),
    (lambda t: "\n".join(t.split("\n")[:3]) + "\n", ["1 sample", "at least two"]),
    (lambda t: "\n".join(t.split("\n")[:2]) + "\n", ["0 samples"]),
    (lambda t: t.split("\n")[0] + "\n", ["no column header"]),
    (lambda t: t.replace("clk_tck=100", "clk_tck=0"), ["clk_tck = '0'"]),
    (lambda t: t.replace("clk_tck=100 ", ""), ["no clk_tck"]),
    (lambda t: t.replace("\tvsize\t", "\tvsz\t"), [":2: column header lacks vsize"]),
    (lambda t: t.replace("\t300\t", "\tlots\t"), [":6: utime = 'lots'"]),
    (lambda t: t.replace("\t150\t", "\t15\t"), [":5: utime = 15 goes back from 50"]),
    (lambda t: t.replace("\tZ\t", "\tZZ\t"), [":6: state = 'ZZ'"]),
    (lambda t: t.replace("\t4242\t", "\t4343\t", 1), [":4: pid 4242, earlier lines have 4343"]),
    (lambda t: t.replace("\t0\t", "\t", 1), [":3: ", "fields, expected 14"]),
    (lambda t: b"\xff\xfe" + t.encode(), ["not valid UTF-8 (byte 0)"]),
    (lambda t: t.replace("4.000000", "0.000000"), [":6: elapsed = 0.0 goes back"]),
])
def test_cpu_stats_bad_files(tmp_path, transform, needles):
    bad = corrupt(tmp_path, "bad.tsv", transform)
    assert_one_line_error(run_cli(bad), "bad.tsv", *needles)


def test_cpu_stats_zero_span(tmp_path):
    path = write_log(tmp_path / "z.tsv", [(3, 0, 0, "R", 1, 0), (3, 0, 0, "R", 1, 0)])
    assert_one_line_error(run_cli(path), "z.tsv", "span 0.0 s")


def test_cpu_stats_missing_file_and_usage(tmp_path):
    assert_one_line_error(run_cli(tmp_path / "none.tsv"), "none.tsv", "No such file")
    assert_one_line_error(run_cli(tmp_path), str(tmp_path), "Is a directory")
    r = run_cli()
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_console_script_installed():
    from importlib.metadata import entry_points
    assert "xllm-cpu-stats" in {e.name for e in entry_points(group="console_scripts")}
