"""The contract every harness asserts: load, or a documented error that names the input."""
from __future__ import annotations

import os
import tempfile

ALLOWED = (ValueError, FileNotFoundError)


class Finding(AssertionError):
    """An input broke the contract (the fuzzer reports the traceback and saves the input)."""


def expect_documented_error(fn, *args, name: str = None):
    """Run fn(*args); an ALLOWED error must name `name` (the file) in its message."""
    try:
        return fn(*args)
    except ALLOWED as exc:
        if isinstance(exc, UnicodeError):   # a ValueError subclass, but a raw decoder error
            raise Finding(f"raw {type(exc).__name__} escaped: {exc}") from exc
        if name is not None and name not in str(exc):
            raise Finding(f"{type(exc).__name__} does not name the file {name!r}: {exc}") from exc
        return None


class Scratch:
    """One reusable file (in /dev/shm when it exists) that each input is written to."""

    def __init__(self, suffix: str):
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.dir = tempfile.mkdtemp(prefix="xllm-fuzz-", dir=base)
        self.path = os.path.join(self.dir, "input" + suffix)

    def write(self, data: bytes, path: str = None) -> str:
        path = path or self.path
        with open(path, "wb") as f:
            f.write(data)
        return path
