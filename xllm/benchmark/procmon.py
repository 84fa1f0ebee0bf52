"""/proc readers for the benchmarks: this process's CPU time and memory, and a monitor
of the whole machine's CPU use during a run (a busy machine is reported).
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import List, Optional



def _clock_ticks() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError, AttributeError):
        return 100


def proc_self_stat() -> dict:
    """utime/stime (seconds), state, threads, vsize and rss (bytes) from /proc/self/stat."""
    try:
        with open("/proc/self/stat") as f:
            text = f.read()
    except OSError:
        return {}
    rest = text[text.rindex(")") + 2:].split()      # fields from 3 (state) on; comm may hold spaces
    hz = _clock_ticks()
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
    return {
        "state": rest[0],
        "utime_s": int(rest[11]) / hz,
        "stime_s": int(rest[12]) / hz,
        "num_threads": int(rest[17]),
        "vsize_bytes": int(rest[20]),
        "rss_bytes": int(rest[21]) * page,
    }


def proc_status_bytes(key: str) -> Optional[int]:
    """A kB field of /proc/self/status (VmHWM: peak RSS, VmRSS: RSS now) in bytes."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux: '5' into /proc/self/clear_refs), so the peak
    seen afterwards belongs to the model run, not to the 1 GB bandwidth probe."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _system_cpu_seconds() -> Optional[tuple]:
    """(busy, steal) CPU-seconds of all processes since boot, from /proc/stat.  Steal is time
    the hypervisor ran something else on this VM's CPUs."""
    try:
        with open("/proc/stat") as f:
            parts = f.readline().split()
    except OSError:
        return None
    vals = [int(v) for v in parts[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)     # idle + iowait
    steal = vals[7] if len(vals) > 7 else 0
    hz = _clock_ticks()
    return (sum(vals[:8]) - idle - steal) / hz, steal / hz


class CpuMonitor:
    """Samples /proc/self/stat every `interval` seconds in a thread while a benchmark runs;
    also measures how much CPU *other* processes used meanwhile (they skew the figures)."""

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self.samples: List[dict] = []
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        self.t0 = time.perf_counter()
        self.start = proc_self_stat()
        self.sys0 = _system_cpu_seconds()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            s = proc_self_stat()
            if s:
                s["t_s"] = round(time.perf_counter() - self.t0, 3)
                self.samples.append(s)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.wall = time.perf_counter() - self.t0
        self.end = proc_self_stat()
        self.sys1 = _system_cpu_seconds()
        return False

    def summary(self) -> dict:
        if not self.start or not self.end:
            return {"wall_s": self.wall}
        cpu = (self.end["utime_s"] - self.start["utime_s"]) + (self.end["stime_s"] - self.start["stime_s"])
        out = {
            "wall_s": self.wall,
            "utime_s": self.end["utime_s"] - self.start["utime_s"],
            "stime_s": self.end["stime_s"] - self.start["stime_s"],
            "avg_cpu_pct": 100.0 * cpu / self.wall if self.wall > 0 else float("nan"),
            "vsize_bytes": max([self.end["vsize_bytes"]] + [s["vsize_bytes"] for s in self.samples]),
            "state": self.end["state"],
            "num_threads": self.end["num_threads"],
        }
        if self.sys0 is not None and self.sys1 is not None and self.wall > 0:
            out["other_processes_cpu_pct"] = max(0.0, 100.0 * ((self.sys1[0] - self.sys0[0]) - cpu) / self.wall)
            out["steal_pct"] = 100.0 * (self.sys1[1] - self.sys0[1]) / self.wall
        return out


def _contention_warning(cpu: dict, prog: str, limits: Optional[dict] = None) -> None:
    lim = limits or {}
    other = max([x for x in (cpu.get("other_processes_cpu_pct"), lim.get("other_processes_cpu_pct"))
                 if x is not None], default=None)
    steal = max([x for x in (cpu.get("steal_pct"), lim.get("steal_pct")) if x is not None], default=None)
    if other is not None and other > 20:
        print(f"{prog}: warning: other processes used {other:.0f}% of a core during the run; "
              f"figures are lower than this machine can reach", file=sys.stderr)
    if steal is not None and steal > 10:
        print(f"{prog}: warning: the hypervisor took {steal:.0f}% of a core (steal time) during the run; "
              f"figures are lower than this machine can reach", file=sys.stderr)
