"""Coverage-guided fuzz harnesses (atheris) for every reader of untrusted input.

    python -m tests.fuzz NAME [--runs N] [--seconds S] [--corpus DIR] [--replay FILE ...]
    python -m tests.fuzz --list

Each harness (harnesses.py) takes the fuzzer's bytes as one input of its reader and asserts the
contract: the input loads, or the reader raises the documented error type (ValueError or
FileNotFoundError) with a message naming the file; any other exception, a crash, an
out-of-bounds access or an input that runs over the per-input time limit is a finding.
Seed corpora come from the real files in ../shared (headers of the large ones) and from small
files the seeds module writes itself.  Inputs that once found a bug live in
regressions/NAME/ and are replayed by tests/test_fuzz.py on every run.
"""
