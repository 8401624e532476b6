"""What a run's output.log receives: the trainer's output, less terminal escape sequences.

output.log is read in editors and quoted by the reports (result.json's log
tail), where colour codes are noise: `ESC[1mESC[38;5;208m...ESC[0m`. Some
libraries print them whatever the terminal (Trackio ignores NO_COLOR and
writes them to a plain file), so the runner takes the trainer's output
through a pipe and drops ECMA-48 escape sequences (CSI such as colours and
cursor moves, OSC such as hyperlinks and window titles, and the other ESC
forms) on the way to the file. Everything else passes byte for byte: text,
carriage returns of progress bars, invalid UTF-8. A sequence split across
two reads is held back until it is complete, so output stays live.

It owns copying one attempt's pipe into the log; it never starts or stops
processes (process.py).
"""
from __future__ import annotations

import os
import re
import select
import threading
import time
from typing import BinaryIO

ESC = b"\x1b"
# ECMA-48 escape sequences: CSI (ESC [ params intermediates final), OSC (ESC ] ... BEL or ST),
# DCS/SOS/PM/APC strings (ESC P|X|^|_ ... ST), and the two- or three-byte forms (ESC ( B, ESC 7, ESC M).
# Only 7-bit forms: the 8-bit C1 bytes (0x9b CSI) are also UTF-8 continuation bytes, so they stay.
SEQUENCE = re.compile(rb"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[PX^_][^\x1b]*\x1b\\|[ -/]*[0-~])")
# The end of a read that a later read may complete into a SEQUENCE (a proper prefix of one).
UNFINISHED = re.compile(rb"\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*\x1b?|[PX^_][^\x1b]*\x1b?|[ -/]*)\Z")
MAX_HELD = 4096  # bytes held back for an unfinished sequence; a longer "sequence" is not one, and is written
READ_BYTES = 1 << 16
POLL_S = 0.2  # how often an idle pump looks whether it has been told to finish


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


class LogPump:
    """Copies a child's output pipe into the open log file on a thread, escape sequences stripped."""

    def __init__(self, pipe: BinaryIO, log: BinaryIO) -> None:
        self.pipe, self.log = pipe, log
        self._stripper = AnsiStripper()
        self._deadline: float | None = None
        self._writable = True
        self._thread = threading.Thread(target=self._run, name="output.log", daemon=True)

    def start(self) -> "LogPump":
        self._thread.start()
        return self

    def _write(self, data: bytes) -> None:
        if data and self._writable:
            try:
                self.log.write(data)
                self.log.flush()  # live: output.log shows progress as the trainer prints it
            except OSError:  # a full disk: keep draining the pipe, or the trainer would block on it
                self._writable = False

    def _run(self) -> None:
        fd = self.pipe.fileno()
        poller = select.poll()  # not select.select: it fails on descriptors past 1023, a busy runner's
        poller.register(fd, select.POLLIN)
        try:
            while self._deadline is None or time.monotonic() < self._deadline:
                if poller.poll(POLL_S * 1000):  # readable, or hung up: the read then returns b""
                    data = os.read(fd, READ_BYTES)
                    if not data:
                        break  # end of file: every process holding the pipe has exited
                    self._write(self._stripper.feed(data))
            self._write(self._stripper.flush())
        finally:
            self.pipe.close()

    def finish(self, grace_s: float) -> None:
        """Wait for the pipe to end once the trainer has exited: for at most `grace_s`, after which a
        process that outlived it and still holds the pipe is no longer read."""
        self._deadline = time.monotonic() + grace_s
        self._thread.join()
