"""What a run's output.log receives: the trainer's output, less terminal escape sequences.

output.log is read in editors and quoted by the reports (result.json's log
tail), where colour codes are noise: `ESC[1mESC[38;5;208m...ESC[0m`. Some
libraries print them whatever the terminal (Trackio ignores NO_COLOR and
writes them to a plain file), so the trainer's output goes through a pipe to
a small copier process, `python -S -m lib.run.output_log` (standard input to
standard output, which is output.log opened for appending), which drops
ECMA-48 escape sequences (CSI such as colours and cursor moves, OSC such as
hyperlinks and window titles, and the other ESC forms) on the way to the
file. Everything else passes byte for byte: text, carriage returns of
progress bars, invalid UTF-8. A sequence split across two reads is held back
until it is complete, so output stays live.

The copier is a process of its own, not a thread of the runner, so that what
the trainer printed last still reaches the file when the runner is killed
(kill -9, the out-of-memory killer, a Slurm task killed on its node): it ends
when the pipe does, once every process holding it has exited. Standard
library only, for a fast start without site-packages. Starting and stopping
it belongs to process.py.
"""
from __future__ import annotations

import os
import re
import signal
import sys

ESC = b"\x1b"
# ECMA-48 escape sequences: CSI (ESC [ params intermediates final), OSC (ESC ] ... BEL or ST),
# DCS/SOS/PM/APC strings (ESC P|X|^|_ ... ST), and the two- or three-byte forms (ESC ( B, ESC 7, ESC M).
# Only 7-bit forms: the 8-bit C1 bytes (0x9b CSI) are also UTF-8 continuation bytes, so they stay.
SEQUENCE = re.compile(rb"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[PX^_][^\x1b]*\x1b\\|[ -/]*[0-~])")
# The end of a read that a later read may complete into a SEQUENCE (a proper prefix of one).
UNFINISHED = re.compile(rb"\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*\x1b?|[PX^_][^\x1b]*\x1b?|[ -/]*)\Z")
MAX_HELD = 4096  # bytes held back for an unfinished sequence; a longer "sequence" is not one, and is written
READ_BYTES = 1 << 16


class AnsiStripper:
    """Strips escape sequences from a byte stream fed in arbitrary pieces."""

    def __init__(self) -> None:
        self._held = b""

    def feed(self, data: bytes) -> bytes:
        """The part of `data` (after what was held back) that can be written now, sequences removed."""
        data = self._held + data
        self._held = b""
        if ESC not in data:
            return data
        # An unfinished sequence runs to the end and holds at most one ESC after its first (an OSC's or a
        # DCS's terminator begun), so it starts at the last ESC or the one before.
        window = max(0, len(data) - MAX_HELD)
        last = data.rfind(ESC, window)
        for start in (data.rfind(ESC, window, last), last):
            if start != -1 and UNFINISHED.match(data, start):
                data, self._held = data[:start], data[start:]
                break
        return SEQUENCE.sub(b"", data)

    def flush(self) -> bytes:
        """What is held back at the end of the stream: an unfinished sequence is written as it came."""
        held, self._held = self._held, b""
        return held


def copy_stripped(source: int, target: int) -> None:
    """Copy file descriptor `source` to `target` until end of file, escape sequences removed. A target
    that cannot be written (a full disk) is given up, but the pipe is still drained: a trainer writing
    into a full pipe would block."""
    stripper, writable = AnsiStripper(), True
    while True:
        data = os.read(source, READ_BYTES)
        last = not data  # end of file: every process holding the pipe has exited
        data = stripper.flush() if last else stripper.feed(data)
        try:
            while data and writable:  # unbuffered: output.log shows progress as the trainer prints it
                data = data[os.write(target, data):]  # a write may take only part
        except OSError:
            writable = False
        if last:
            return


def main() -> None:
    """`python -S -m lib.run.output_log`: standard input to standard output, escape sequences removed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the runner: drain to the end instead
    copy_stripped(sys.stdin.fileno(), sys.stdout.fileno())


if __name__ == "__main__":
    main()
