"""Wait until the machine is idle before a benchmark (other processes skew every figure).

    python benchmarks/wait_quiet.py [--busy 0.15] [--window 3] [--timeout 1800] && xllm-benchmark ...

Samples /proc/stat every `--window` seconds and returns (exit 0) as soon as all CPUs together
were busy less than `--busy` cores' worth during one window; exit 1 after `--timeout`.
"""
import argparse
import sys
import time


def busy_cores(window: float) -> float:
    def read():
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        idle = vals[3] + vals[4]
        return sum(vals[:8]) - idle, time.monotonic()
    (b0, t0) = read()
    time.sleep(window)
    (b1, t1) = read()
    import os
    return (b1 - b0) / os.sysconf("SC_CLK_TCK") / (t1 - t0)


def main():
    p = argparse.ArgumentParser(description="wait until the CPUs are idle")
    p.add_argument("--busy", type=float, default=0.15, help="max busy cores in a window (default 0.15)")
    p.add_argument("--window", type=float, default=3.0)
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args()
    end = time.monotonic() + a.timeout
    while time.monotonic() < end:
        b = busy_cores(a.window)
        if b < a.busy:
            if not a.quiet:
                print(f"wait_quiet: {b:.2f} busy cores", file=sys.stderr)
            return 0
    print("wait_quiet: timed out; the machine stayed busy", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
