"""stderr filter for tools/launch.sh: the script's own error stays the last line.

    accelerate launch ... 2>&1 1>&3 | python tools/launch_errors.py LOG

Passes the launched script's stderr through unchanged (logs, progress bars, its own tracebacks),
except what the launcher adds after the script failed: accelerate's `CalledProcessError`
traceback, torch-elastic's `ChildFailedError` report and its `Sending process ... SIGTERM`
warnings go to LOG only. With several processes, each rank's identical `error: ...` line or
traceback is shown once. Exits with the failed script's own exit status read from the launcher's
report (0 when the launcher reported no failure), which launch.sh returns.
"""
from __future__ import annotations

import os
import re
import signal
import sys
from typing import List, Optional

TRACEBACK = "Traceback (most recent call last):"
# A traceback raised by the launcher itself (its first frame is accelerate's or torch's runner).
LAUNCHER_FRAME = re.compile(r"bin/accelerate\b|accelerate/commands/|torch/distributed/(run|launcher)")
# torch-elastic log lines (e.g. `W1129 17:08:38.016000 16071 torch/distributed/elastic/...`).
ELASTIC_LINE = re.compile(r"^[WEI]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ torch/distributed/|torch\.distributed\.elastic")
STATUS = (re.compile(r"returned non-zero exit status (-?\d+)"), re.compile(r"exitcode\s*:\s*(-?\d+)"))


class Filter:
    def __init__(self, log_path: str, out):
        self.log = open(log_path, "w", encoding="utf-8", errors="replace")
        self.out = out
        self.launcher = False          # the launcher's own report has started: log only
        self.block: Optional[List[str]] = None   # a traceback being collected
        self.shown_blocks = set()
        self.shown_errors = set()
        self.launcher_text: List[str] = []

    def emit(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def line(self, text: str) -> None:
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
        if text.startswith("error:"):
            if text in self.shown_errors:
                return
            self.shown_errors.add(text)
        self.emit(text)

    def flush_block(self) -> None:
        block, self.block = "".join(self.block), None
        if block not in self.shown_blocks:
            self.shown_blocks.add(block)
            self.emit(block)

    def close(self) -> int:
        if self.block is not None:
            self.flush_block()
        self.log.close()
        report = "".join(self.launcher_text)
        root = report.split("Root Cause", 1)[-1]
        for pattern in STATUS:
            match = pattern.search(root) or pattern.search(report)
            if match:
                code = int(match.group(1))
                return 128 - code if code < 0 else (code % 256 or 1)   # killed by signal N: 128 + N
        return 1 if self.launcher else 0


def main() -> int:
    # Ctrl-C reaches the whole process group: keep forwarding the script's last words until EOF.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    filt = Filter(sys.argv[1], sys.stderr)
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
    return filt.close()


if __name__ == "__main__":
    sys.exit(main())
