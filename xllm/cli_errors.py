"""One way for every console script to fail: exit code 2 and one line on stderr."""
from __future__ import annotations

import functools
import sys


class UsageError(ValueError):
    """A bad command-line value; the message names it."""


def cli_entry(prog: str):
    """Decorate a `main(argv=None) -> int` so bad input ends with `prog: message` and exit 2.

    ValueError, FileNotFoundError, OSError and UsageError are the user's problem (a bad file
    or value); anything else is a bug and keeps its traceback.  Ctrl-C exits 130 quietly.
    """
    def wrap(fn):
        @functools.wraps(fn)
        def main(argv=None):
            try:
                return fn(argv) or 0
            except SystemExit as exc:       # argparse: --help (0) or a bad argument (2)
                return exc.code if isinstance(exc.code, int) else 2
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                return 130
            except (ValueError, OSError) as exc:
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                print(f"{prog}: error: {msg}", file=sys.stderr)
                return 2
        return main
    return wrap


def exit_code(main):
    """Entry point for console scripts: run `main` and exit with its code."""
    def run():
        sys.exit(main())
    return run


import argparse  # noqa: E402


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr (no usage dump) and exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _int_at_least(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1, quoting the bad value otherwise."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0, "an integer >= 0")


def finite_float(text: str) -> float:
    """argparse type: a finite number."""
    import math
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value
