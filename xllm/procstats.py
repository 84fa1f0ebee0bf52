"""Statistics of a process from /proc/<pid>/stat, sampled to a log by a background thread.

`read_proc_stat(pid)` parses one /proc/<pid>/stat line (proc_pid_stat(5)).  The command name
(field 2) is in parentheses and may itself hold spaces and parentheses ("a) (b"), so it is
everything between the first "(" and the *last* ")"; the other fields follow the last ")".

`StatsLogger(pid, path, interval=1.0)` writes one line per sample, at start, every `interval`
seconds, and once more when stopped or when the process has exited (a zombie still shows its
final utime/stime).  The log is UTF-8 text:

    # xllm-stats v1 clk_tck=100 page_size=4096
    time	elapsed	pid	state	policy	nice	vsize	task_cpu	utime	stime	utime_s	stime_s	num_threads	rss
    1764580000.123456	0.000000	4242	R	0	0	741834752	1	180	7	1.800000	0.070000	3	20811776

one tab-separated sample per line, each line written whole and flushed:
  time        Unix time of the sample (s);  elapsed: monotonic seconds since the logger started
  pid, state  process id; R running, S sleeping, D disk wait, Z zombie, T stopped, ...
  policy      scheduling policy (0 SCHED_OTHER, 1 FIFO, 2 RR, 3 BATCH, 5 IDLE, 6 DEADLINE)
  nice        nice value (-20..19);  task_cpu: the CPU it last ran on
  vsize       virtual memory size (bytes);  rss: resident set (bytes);  num_threads
  utime/stime CPU time in user / kernel mode summed over its threads, in clock ticks
              (clk_tck per second, from the first line) and in seconds (utime_s, stime_s)
`xllm-cpu-stats FILE` (xllm/cpu_stats.py) reads it back.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Optional

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MAGIC = "# xllm-stats v1"
COLUMNS = ("time", "elapsed", "pid", "state", "policy", "nice", "vsize", "task_cpu",
           "utime", "stime", "utime_s", "stime_s", "num_threads", "rss")
ENDED_STATES = ("Z", "X", "x")          # zombie, dead: the process has exited

# proc_pid_stat(5) field numbers (1-based) of what we keep, after pid (1) and comm (2)
_FIELDS = {"state": 3, "ppid": 4, "utime": 14, "stime": 15, "nice": 19, "num_threads": 20,
           "vsize": 23, "rss": 24, "task_cpu": 39, "policy": 41}


def parse_proc_stat(text: str, source: str = "/proc/<pid>/stat") -> dict:
    """The fields of one /proc/<pid>/stat line; ValueError naming `source` if malformed."""
    open_at, close_at = text.find("("), text.rfind(")")
    if open_at < 1 or close_at < open_at:
        raise ValueError(f"{source}: expected 'pid (comm) state ...', got {text[:80]!r}")
    try:
        pid = int(text[:open_at])
    except ValueError:
        raise ValueError(f"{source}: pid {text[:open_at].strip()!r} is not an integer") from None
    rest = text[close_at + 1:].split()
    need = max(_FIELDS.values()) - 2
    if len(rest) < need:
        raise ValueError(f"{source}: {len(rest) + 2} fields, expected at least {need + 2}")
    stat = {"pid": pid, "comm": text[open_at + 1:close_at]}
    for name, number in _FIELDS.items():
        value = rest[number - 3]
        if name == "state":
            stat[name] = value
            continue
        try:
            stat[name] = int(value)
        except ValueError:
            raise ValueError(f"{source}: field {number} ({name}) = {value!r}, expected an integer") from None
    stat["rss"] *= PAGE_SIZE
    stat["utime_s"] = stat["utime"] / CLK_TCK
    stat["stime_s"] = stat["stime"] / CLK_TCK
    return stat


def read_proc_stat(pid: int) -> dict:
    """pid, comm, state, ppid, policy, nice, num_threads, vsize (bytes), rss (bytes), task_cpu,
    utime, stime (clock ticks) and utime_s, stime_s (seconds) of a process.
    ProcessLookupError when it does not exist (or was reaped)."""
    source = f"/proc/{int(pid)}/stat"
    try:
        with open(source, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ProcessLookupError(f"{source}: no process {pid}") from None
    return parse_proc_stat(raw.decode("utf-8", "replace"), source)


def format_sample(stat: dict, wall: float, elapsed: float) -> str:
    values = {"time": f"{wall:.6f}", "elapsed": f"{elapsed:.6f}",
              "utime_s": f"{stat['utime_s']:.6f}", "stime_s": f"{stat['stime_s']:.6f}"}
    return "\t".join(values[c] if c in values else str(stat[c]) for c in COLUMNS) + "\n"


class StatsLogger:
    """Log /proc/<pid>/stat of `pid` to `path` every `interval` seconds from a daemon thread.

    start() opens the file (OSError naming it if it cannot be written) and writes the header
    and a first sample; stop() writes a last sample and closes it.  The thread ends by itself
    when the process has exited.  `last` is the latest sample (a dict), None before the first.
    """

    def __init__(self, pid: int, path, interval: float = 1.0):
        if not (isinstance(interval, (int, float)) and interval > 0):
            raise ValueError(f"stats interval = {interval!r}, expected a number of seconds > 0")
        self.pid = int(pid)
        self.path = os.fspath(path)
        self.interval = float(interval)
        self.samples = 0
        self.last: Optional[dict] = None
        self._file = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._t0 = 0.0

    def start(self) -> "StatsLogger":
        if self._thread is not None:
            raise RuntimeError("StatsLogger already started")
        try:
            self._file = open(self.path, "w", encoding="utf-8")
        except OSError as exc:
            raise OSError(f"{self.path}: cannot write the stats log ({exc.strerror})") from None
        self._file.write(f"{MAGIC} clk_tck={CLK_TCK} page_size={PAGE_SIZE}\n" + "\t".join(COLUMNS) + "\n")
        self._file.flush()
        self._t0 = time.monotonic()
        self.sample()
        self._thread = threading.Thread(target=self._run, name=f"xllm-stats-{self.pid}", daemon=True)
        self._thread.start()
        return self

    def sample(self) -> bool:
        """Write one sample now; False once the process has exited (or is gone)."""
        with self._lock:
            if self._file is None or self._file.closed:
                return False
            try:
                stat = read_proc_stat(self.pid)
            except (ProcessLookupError, ValueError):
                return False
            self._file.write(format_sample(stat, time.time(), time.monotonic() - self._t0))
            self._file.flush()
            self.samples += 1
            self.last = stat
            return stat["state"] not in ENDED_STATES

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if not self.sample():
                return

    def stop(self) -> None:
        """Write a last sample (if the process can still be read) and close the log."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._file is not None and not self._file.closed:
            if self.last is None or self.last["state"] not in ENDED_STATES:
                self.sample()
            with self._lock:
                self._file.close()

    def __enter__(self) -> "StatsLogger":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
