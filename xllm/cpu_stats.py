"""xllm-cpu-stats: summarize a stats log written by `xllm-main --stats-log` / `xllm-serve --stats-log`.

    xllm-cpu-stats run.tsv

The average CPU use over the run is (Δutime + Δstime) / Δwall between the first and the last
sample, as a percentage of one core (200 % = two cores busy all the time); also the user and
system parts, the peak memory, the states and CPUs seen.  The log format is described in
xllm/procstats.py.  A file that is not such a log, is empty, truncated or has fewer than two
samples is refused with one line naming the file and line.
"""
from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass

from .cli_errors import ArgumentParser, cli_entry
from .procstats import COLUMNS, MAGIC

_FLOATS = ("time", "elapsed", "utime_s", "stime_s")
_POLICIES = {0: "SCHED_OTHER", 1: "SCHED_FIFO", 2: "SCHED_RR", 3: "SCHED_BATCH", 5: "SCHED_IDLE",
             6: "SCHED_DEADLINE"}


@dataclass
class StatsLog:
    path: str
    clk_tck: int
    samples: list                # one dict per line: column -> int / float / str


def _header_value(line: str, key: str, path: str) -> int:
    for word in line.split()[3:]:
        name, _, value = word.partition("=")
        if name == key:
            if value.isdigit() and int(value) > 0:
                return int(value)
            raise ValueError(f"{path}:1: {key} = {value!r}, expected a positive integer")
    raise ValueError(f"{path}:1: no {key}=N in the header line")


def read_stats_log(path) -> StatsLog:
    """Parse a stats log; ValueError naming the file (and line) when it is not a complete one."""
    try:
        raw = open(path, "rb").read()
    except OSError as exc:
        raise OSError(f"{path}: {exc.strerror}") from None
    if not raw:
        raise ValueError(f"{path}: empty file, expected an xllm stats log ('{MAGIC} ...' first)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not valid UTF-8 (byte {exc.start}), expected an xllm stats log") from None
    lines = text.split("\n")
    if not lines[0].startswith(MAGIC + " ") and lines[0] != MAGIC:
        raise ValueError(f"{path}:1: not an xllm stats log (first line {lines[0][:40]!r}, "
                         f"expected '{MAGIC} ...')")
    if lines[-1] != "":
        raise ValueError(f"{path}:{len(lines)}: truncated (the last line has no newline)")
    lines.pop()
    clk_tck = _header_value(lines[0], "clk_tck", path)
    if len(lines) < 2:
        raise ValueError(f"{path}: truncated: no column header after line 1")
    columns = lines[1].split("\t")
    missing = [c for c in COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"{path}:2: column header lacks {', '.join(missing)}")
    samples = []
    for number, line in enumerate(lines[2:], 3):
        values = line.split("\t")
        if len(values) != len(columns):
            raise ValueError(f"{path}:{number}: {len(values)} fields, expected {len(columns)}")
        sample = {}
        for name, value in zip(columns, values):
            if name not in COLUMNS:
                continue                              # a column a later version added
            try:
                sample[name] = float(value) if name in _FLOATS else value if name == "state" else int(value)
            except ValueError:
                raise ValueError(f"{path}:{number}: {name} = {value!r}, expected a number") from None
        if len(sample["state"]) != 1 or not sample["state"].isalpha():
            raise ValueError(f"{path}:{number}: state = {sample['state']!r}, expected one letter")
        if samples:
            prev = samples[-1]
            if sample["pid"] != prev["pid"]:
                raise ValueError(f"{path}:{number}: pid {sample['pid']}, earlier lines have {prev['pid']}")
            for name in ("elapsed", "utime", "stime"):
                if sample[name] < prev[name]:
                    raise ValueError(f"{path}:{number}: {name} = {sample[name]} goes back from {prev[name]}")
        samples.append(sample)
    if len(samples) < 2:
        raise ValueError(f"{path}: {len(samples)} sample{'' if len(samples) == 1 else 's'}, "
                         f"need at least two for an average")
    return StatsLog(str(path), clk_tck, samples)


def summarize(log: StatsLog) -> dict:
    first, last = log.samples[0], log.samples[-1]
    wall = last["elapsed"] - first["elapsed"]
    if wall <= 0:
        raise ValueError(f"{log.path}: the samples span {wall} s, expected a positive time")
    user = (last["utime"] - first["utime"]) / log.clk_tck
    system = (last["stime"] - first["stime"]) / log.clk_tck
    return {
        "pid": first["pid"], "samples": len(log.samples), "wall_s": wall,
        "cpu_percent": 100.0 * (user + system) / wall,
        "user_percent": 100.0 * user / wall, "system_percent": 100.0 * system / wall,
        "utime_s": user, "stime_s": system,
        "peak_vsize": max(s["vsize"] for s in log.samples), "peak_rss": max(s["rss"] for s in log.samples),
        "max_threads": max(s["num_threads"] for s in log.samples),
        "states": Counter(s["state"] for s in log.samples),
        "cpus": sorted({s["task_cpu"] for s in log.samples}),
        "policies": sorted({s["policy"] for s in log.samples}),
        "nice": sorted({s["nice"] for s in log.samples}),
    }


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def report(summary: dict) -> str:
    s = summary
    states = ", ".join(f"{k} {v}" for k, v in sorted(s["states"].items()))
    policies = ", ".join(f"{p} ({_POLICIES.get(p, 'unknown')})" for p in s["policies"])
    return "\n".join([
        f"pid: {s['pid']}",
        f"samples: {s['samples']} over {s['wall_s']:.3f} s",
        f"average CPU: {s['cpu_percent']:.2f} % of one core",
        f"user: {s['user_percent']:.2f} %, system: {s['system_percent']:.2f} %",
        f"CPU time: {s['utime_s']:.2f} s user + {s['stime_s']:.2f} s system",
        f"peak vsize: {_mib(s['peak_vsize'])}, peak rss: {_mib(s['peak_rss'])}",
        f"threads: up to {s['max_threads']}",
        f"states: {states}",
        f"CPUs: {', '.join(map(str, s['cpus']))}",
        f"policy: {policies}; nice: {', '.join(map(str, s['nice']))}",
    ]) + "\n"


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="xllm-cpu-stats",
                       description="Average CPU use and other figures of a --stats-log file.")
    p.add_argument("file", help="a stats log written by xllm-main/xllm-serve --stats-log")
    return p


@cli_entry("xllm-cpu-stats")
def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    sys.stdout.write(report(summarize(read_stats_log(args.file))))
    return 0


def main(argv=None) -> int:
    return _main(argv)


if __name__ == "__main__":
    sys.exit(main())
