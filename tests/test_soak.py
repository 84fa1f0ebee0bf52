"""benchmarks/soak.py on a few hundred requests: its report and its exit status (not timed;
the 10,000-request run and its figures are in benchmarks/README.md)."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOAK = ROOT / "benchmarks" / "soak.py"


def run_soak(tmp_path, *args):
    out = tmp_path / "soak.json"
    res = subprocess.run([sys.executable, str(SOAK), "--threads", "1", "--json", str(out), *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=1800)
    report = json.loads(out.read_text()) if out.exists() else None
    return res, report


def test_soak_small_run_passes_and_reports(tmp_path):
    # RSS growth from the 20th request is warm-up, not a leak: the 2% bound is for the long run
    res, report = run_soak(tmp_path, "--n", "200", "--max-growth", "50")
    assert res.returncode == 0, res.stdout + res.stderr
    assert report["ok"] and all(report["checks"].values()), report
    assert report["requests"] == 200
    assert report["finished"] + report["aborted"] + report["refused"] == 200
    assert report["aborted"] > 0 and report["refused"] > 0 and report["probes"] >= 3
    assert report["unexpected_errors"] == 0 and report["probe_mismatches"] == 0
    assert report["abort_unknown_ok"] == report["aborted"]       # a second abort is refused
    assert report["kv_blocks_free"] == report["kv_blocks"] > 0 and report["kv_tables_left"] == 0
    assert set(report["rss_at"]) == {"20", "200"} and all(v > 0 for v in report["rss_at"].values())
    assert report["completions"] >= report["finished"] and report["tokens"] > 0
    assert "KV blocks free at the end" in res.stdout and "growth" in res.stdout


def test_soak_exits_1_when_a_check_fails(tmp_path):
    res, report = run_soak(tmp_path, "--n", "20", "--max-growth", "-100")    # growth can never pass
    assert res.returncode == 1, res.stdout + res.stderr
    assert report["checks"]["rss_growth"] is False and report["ok"] is False
    assert "FAIL rss_growth" in res.stdout


def test_soak_refuses_a_tiny_count(tmp_path):
    res, _ = run_soak(tmp_path, "--n", "3")
    assert res.returncode == 2 and "--n 3" in res.stderr


def test_serve_soak_small_run(tmp_path):
    """benchmarks/soak_serve.py against a live xllm-serve it starts (the openai client)."""
    out = tmp_path / "serve.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak_serve.py"), "--n", "60", "--clients", "4",
                          "--threads", "1", "--max-growth", "50", "--json", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(out.read_text())
    assert report["finished"] + report["dropped"] + report["refused"] == 60 and report["refused"] == 3
    assert report["unexpected_errors"] == 0 and report["kv_blocks_used"] == 0
    assert set(report["rss_at"]) == {"6", "60"} and report["rss_growth_pct"] is not None
