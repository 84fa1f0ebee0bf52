"""Every fuzz harness runs a bounded number of inputs on each CI run, and every input that
once found a bug (tests/fuzz/regressions/NAME/) is replayed.  Long runs: README, Hardening."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.harnesses import HARNESSES

ROOT = Path(__file__).resolve().parents[1]
REGRESSIONS = ROOT / "tests" / "fuzz" / "regressions"
CI_RUNS = 1500          # inputs per harness per CI run
CI_SECONDS = 5          # and at most this long each (8 harnesses: under a minute with start-up)
CI_TIMEOUT = 10         # seconds one input may take: a hang, not a slow input on a loaded machine


@pytest.mark.parametrize("name", sorted(HARNESSES))
def test_harness_bounded_run(name, tmp_path):
    res = subprocess.run([sys.executable, "-m", "tests.fuzz", name, "--runs", str(CI_RUNS),
                          "--seconds", str(CI_SECONDS), "--timeout", str(CI_TIMEOUT), "--corpus", str(tmp_path),
                          "--skip-regressions"],        # replayed one by one below
                         cwd=ROOT, capture_output=True, text=True, timeout=CI_SECONDS * 10)
    tail = (res.stdout + res.stderr)[-3000:]
    assert res.returncode == 0, f"harness {name} found something:\n{tail}"
    done = re.search(r"Done (\d+) runs", res.stderr)
    assert done and int(done.group(1)) > 0, f"harness {name} ran no input:\n{tail}"
    assert not list(tmp_path.glob("finding-*")), f"harness {name} saved a finding:\n{tail}"


def _regression_inputs():
    return sorted((p.parent.name, p) for p in REGRESSIONS.glob("*/*") if p.is_file())


@pytest.mark.parametrize("name,path", _regression_inputs(), ids=lambda x: getattr(x, "name", x))
def test_regression_input(name, path):
    HARNESSES[name](path.read_bytes())


def test_regressions_are_named_by_harness():
    for d in REGRESSIONS.iterdir():
        if d.is_dir():
            assert d.name in HARNESSES, f"{d}: no harness of that name"


def test_all_runs_each_harness_and_summarizes(tmp_path, capsys):
    from tests.fuzz.__main__ import main, run_all
    import argparse
    args = argparse.Namespace(runs=30, max_len=4096, timeout=CI_TIMEOUT, seconds=0, whole_seeds=False,
                              corpus=str(tmp_path))
    assert run_all(args, ["prompts"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("prompts") and " ok " in line and "inputs" in line, line
    assert (tmp_path / "prompts").is_dir()
    assert main(["--list"]) == 0 and "chat_template" in capsys.readouterr().out.split()
