"""stderr filter for tools/launch.sh: the script's own error stays the last line.

    accelerate launch ... 2>&1 1>&3 | python tools/launch_errors.py LOG [HELD]

Passes the launched script's stderr through unchanged (logs, progress bars, its own tracebacks)
and keeps what the launcher adds after the script failed out of sight (in LOG only):
- the script's last words (a one-line `error: ...` / `PROG: error: ...`, or the exception line
  ending one of its tracebacks) start a hold: whatever follows within `HOLD_SECONDS` is kept back.
  At the end of the stream that is the launcher's report of the failure, in whatever format the
  installed accelerate / torch prints it (a `CalledProcessError` traceback, a `RuntimeError`
  repeating the script's output chained to one, torch-elastic's `ChildFailedError` report): it is
  written to HELD, and launch.sh shows it only if the launcher exited with status 0 (without HELD
  it is shown when no failure was reported). Output arriving later than `HOLD_SECONDS` is the
  script's own: it is shown, with what was held;
- the known launcher reports are recognised as well (accelerate's traceback, torch-elastic's
  report and its `Sending process ... SIGTERM` warnings), so they are never shown;
- with several processes, each rank's identical `error: ...` line or traceback is shown once.
Exits with the failed script's own exit status read from the launcher's report (0 when the
launcher reported no failure), which launch.sh returns. LOG is created with mode 0600 and never
written through a symbolic link.
"""
from __future__ import annotations

import os
import re
import signal
import sys
import time
from typing import Callable, List, Optional

TRACEBACK = "Traceback (most recent call last):"
# A traceback raised by the launcher itself (its first frame is accelerate's or torch's runner).
LAUNCHER_FRAME = re.compile(r"bin/accelerate\b|accelerate/commands/|torch/distributed/(run|launcher)")
# torch-elastic log lines (e.g. `W1129 17:08:38.016000 16071 torch/distributed/elastic/...`).
ELASTIC_LINE = re.compile(r"^[WEI]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ torch/distributed/|torch\.distributed\.elastic")
STATUS = (re.compile(r"returned non-zero exit status (-?\d+)"), re.compile(r"exitcode\s*:\s*(-?\d+)"))
# A script's one-line error: ours (`error: ...`) and argparse's (`train.py: error: ...`).
ERROR_LINE = re.compile(r"^(\S+: )?error: ")
HOLD_SECONDS = 300.0  # a loaded machine can take a minute or more to tear failed processes down


def open_log(path: str):
    """LOG for writing: created 0600, truncated, never through a symbolic link (None if refused)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.fdopen(os.open(path, flags, 0o600), "w", encoding="utf-8", errors="replace")
    except OSError as err:
        sys.stderr.write(f"warning: launcher log {path} not written ({err.strerror}"
                         f"{': a symbolic link' if os.path.islink(path) else ''})\n")
        return None


class Filter:
    def __init__(self, log, out, clock: Callable[[], float] = time.monotonic):
        self.log = log                 # file object or None
        self.out = out
        self.clock = clock
        self.launcher = False          # the launcher's own report has started: log only
        self.block: Optional[List[str]] = None   # a traceback being collected
        self.shown_blocks = set()
        self.shown_errors = set()
        self.launcher_text: List[str] = []
        self.last_words_at: Optional[float] = None   # when the script's last words were shown
        self.held: List[str] = []

    def emit(self, text: str) -> None:
        if self.last_words_at is not None:
            if self.clock() - self.last_words_at < HOLD_SECONDS:
                self.held.append(text)
                return
            self.release()
        self.out.write(text)
        self.out.flush()

    def release(self) -> None:
        """Show what was held: the script kept writing, so it was its own output."""
        held, self.held, self.last_words_at = self.held, [], None
        for text in held:
            self.out.write(text)

    def last_words(self, text: str) -> None:
        """Show the script's error (unless a hold is on: the first one shown stays the last)."""
        self.emit(text)
        if self.last_words_at is None and not self.held:
            self.last_words_at = self.clock()

    def line(self, text: str) -> None:
        if self.log is not None:
            self.log.write(text)
        if self.launcher:
            self.launcher_text.append(text)
            return
        if ELASTIC_LINE.search(text):
            self.launcher_text.append(text)
            return
        if self.block is not None:
            self.block.append(text)
            if len(self.block) == 2 and LAUNCHER_FRAME.search(text):
                self.launcher, self.launcher_text, self.block = True, self.block, None
            elif len(self.block) > 1 and text.strip() and not text[0].isspace():
                self.flush_block()     # the exception line ends the traceback
            return
        if text.startswith(TRACEBACK):
            self.block = [text]
            return
        if ERROR_LINE.match(text):
            if text not in self.shown_errors:
                self.shown_errors.add(text)
                self.last_words(text)
            return
        self.emit(text)

    def flush_block(self) -> None:
        block, self.block = "".join(self.block), None
        if block not in self.shown_blocks:
            self.shown_blocks.add(block)
            self.last_words(block)

    def close(self, held_path: Optional[str] = None) -> int:
        """End of the stream: the failed script's exit status (0: no failure reported). Text still
        held goes to `held_path` (for launch.sh to show after a success), or without it is shown
        unless a failure was reported."""
        if self.block is not None:
            self.flush_block()
        if self.log is not None:
            self.log.close()
        held, self.held, self.last_words_at = "".join(self.held), [], None
        report = "".join(self.launcher_text) + held
        status = 1 if self.launcher else 0
        root = report.split("Root Cause", 1)[-1]
        for pattern in STATUS:
            match = pattern.search(root) or pattern.search(report)
            if match:
                code = int(match.group(1))
                status = 128 - code if code < 0 else (code % 256 or 1)   # killed by signal N: 128 + N
                break
        if held_path is not None:
            f = open_log(held_path)
            if f is not None:
                with f:
                    f.write(held)
        elif status == 0:
            self.emit(held)
        return status


def main() -> int:
    # Ctrl-C reaches the whole process group: keep forwarding the script's last words until EOF.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    filt = Filter(open_log(sys.argv[1]), sys.stderr)
    fd, pending = sys.stdin.fileno(), b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            filt.line(raw.decode("utf-8", "replace") + "\n")
        # Progress bars redraw with '\r' and no newline: pass them on at once.
        cut = pending.rfind(b"\r")
        if cut >= 0 and filt.block is None and not filt.launcher:
            filt.emit(pending[: cut + 1].decode("utf-8", "replace"))
            pending = pending[cut + 1:]
    if pending:
        filt.line(pending.decode("utf-8", "replace"))
    return filt.close(sys.argv[2] if len(sys.argv) > 2 else None)


if __name__ == "__main__":
    sys.exit(main())
