"""Lines from a piped stdin that a Ctrl-C always interrupts.

`input()` checks for a signal only when its read() returns EINTR.  A SIGINT that arrives
after the prompt is written but before read() starts (a busy machine deschedules the process
right there) is noted by CPython and then waits for a read that may never end.  Here the
process's signal wakeup fd is watched beside stdin: a signal at any moment makes select()
return, and CPython raises the KeyboardInterrupt as soon as it runs bytecode again.

A terminal keeps input() (readline's editing and history): there a person presses Ctrl-C,
not microseconds after the prompt appears.
"""
import os
import select
import signal
import sys


class PipedLineReader:
    """`input()` for a stdin that is a pipe or file: read(prompt) returns a line without its
    newline or raises EOFError; use as a context manager (it owns the wakeup fd meanwhile)."""

    def __init__(self, stdin, stdout):
        self.fd = stdin.fileno()
        self.encoding = stdin.encoding or "utf-8"
        self.errors = stdin.errors or "strict"
        self.stdout = stdout
        self.pending = b""          # bytes read past the last returned line
        self.eof = False

    def __enter__(self):
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        self.old_wakeup = signal.set_wakeup_fd(self.wake_w)
        return self

    def __exit__(self, *exc):
        signal.set_wakeup_fd(self.old_wakeup)
        os.close(self.wake_r)
        os.close(self.wake_w)

    def read(self, prompt: str) -> str:
        self.stdout.write(prompt)
        self.stdout.flush()
        while b"\n" not in self.pending and not self.eof:
            ready, _, _ = select.select([self.fd, self.wake_r], [], [])
            if self.wake_r in ready:
                os.read(self.wake_r, 512)    # the signal's handler runs on the next bytecode
            if self.fd in ready:
                data = os.read(self.fd, 65536)
                self.pending += data
                self.eof = not data
        if b"\n" in self.pending:
            line, self.pending = self.pending.split(b"\n", 1)
        elif self.pending:
            line, self.pending = self.pending, b""   # a last line without its newline
        else:
            raise EOFError
        return line.decode(self.encoding, self.errors)


def piped_stdin() -> bool:
    """True when sys.stdin is a pipe or file this reader can watch (not a terminal), from the
    main thread (only it may own the wakeup fd)."""
    import threading
    if sys.stdin is None or threading.current_thread() is not threading.main_thread():
        return False
    try:
        return not os.isatty(sys.stdin.fileno())
    except (AttributeError, OSError, ValueError):    # no real fd (replaced by the caller)
        return False
