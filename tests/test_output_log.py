"""output.log without terminal escape sequences (lib/run/output_log.py), through the runner's real attempt,
with its copier process: live, complete after a runner killed with -9, not held by a lingering child."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from lib import ROOT
from lib.run.output_log import AnsiStripper, copy_stripped
from lib.run.process import LOG_DRAIN_S, Stopped, run_attempt

# Trackio's line, byte for byte: it prints these whatever the terminal (NO_COLOR, a plain file).
TRACKIO = b'* View dashboard by running in your terminal:\n\x1b[1m\x1b[38;5;208mtrackio show --project "p"\x1b[0m\n'
COLOURED = (
    TRACKIO
    + b"\x1b[34m\x1b[1mwandb\x1b[0m: Tracking run with wandb version 0.31.0\n"  # colour, bold, reset
    + b"\x1b]8;;https://example.org/run\x1b\\run page\x1b]8;;\x1b\\ and \x1b]0;a title\x07\n"  # OSC: link, title
    + b"\x1b(Bcharset\x1b7saved\x1b8 \x1b[2K\x1b[1Aline up\x1b[?25l\n"  # other ESC forms, cursor moves
    + "epoch 1  acc 98.0%  caf\u00e9 \u201b quote\n".encode()  # UTF-8, one with a 0x9b byte (e2 80 9b)
    + b"\rstep 1/4\rstep 2/4\tdone\n\xff\xfe not UTF-8\n"  # carriage returns, a tab, invalid UTF-8
)
PLAIN = (b'* View dashboard by running in your terminal:\ntrackio show --project "p"\n'
         b"wandb: Tracking run with wandb version 0.31.0\n"
         b"run page and \n"
         b"charsetsaved line up\n"
         + "epoch 1  acc 98.0%  caf\u00e9 \u201b quote\n".encode()
         + b"\rstep 1/4\rstep 2/4\tdone\n\xff\xfe not UTF-8\n")


def strip_in_pieces(pieces: list[bytes]) -> bytes:
    stripper = AnsiStripper()
    return b"".join(stripper.feed(piece) for piece in pieces) + stripper.flush()


def test_escape_sequences_go_and_everything_else_stays():
    assert strip_in_pieces([COLOURED]) == PLAIN


def test_a_sequence_split_between_two_reads_is_still_removed():
    """The pipe hands over whatever is there: a sequence may end one read and start the next."""
    for cut in range(len(COLOURED) + 1):
        assert strip_in_pieces([COLOURED[:cut], COLOURED[cut:]]) == PLAIN, cut
    assert strip_in_pieces([bytes([b]) for b in COLOURED]) == PLAIN  # one byte per read


def test_only_an_unfinished_sequence_waits_for_the_next_read():
    """Output stays live: text is handed on at once, a sequence's first bytes only until it completes."""
    stripper = AnsiStripper()
    assert stripper.feed(b"step 3 \x1b[3") == b"step 3 "
    assert stripper.feed(b"2mloss 0.5") == b"loss 0.5"
    assert stripper.feed(b"\x1b]8;;http://x\x1b") == b""  # a hyperlink whose terminator has begun
    assert stripper.feed(b"\\link") == b"link"
    assert stripper.feed(b"ends in \x1b[") == b"ends in "
    assert stripper.flush() == b"\x1b["  # the stream ended inside it: written as it came


def test_an_escape_that_never_completes_is_not_held_without_bound():
    stripper = AnsiStripper()
    assert stripper.feed(b"\x1b]" + b"x" * 10_000) == b"x" * 10_000  # no terminator in 10 kB: not an OSC
    assert stripper.flush() == b""


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full (a device whose writes fail with ENOSPC)")
def test_a_full_disk_stops_the_writing_but_not_the_draining(tmp_path):
    """The trainer must never block on a full pipe because output.log cannot take more."""
    read_end, write_end = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(write_end, b"\x1b[1mx\x1b[0m" * 200_000), os.close(write_end)))
    writer.start()
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        copy_stripped(read_end, full)  # returns at the end of the pipe, no exception
    finally:
        os.close(full)
        os.close(read_end)
    writer.join(10)
    assert not writer.is_alive()


def _trainer(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_the_trainers_colours_never_reach_output_log(tmp_path):
    """Through the runner's real attempt: the trainer writes COLOURED to stdout and stderr."""
    code = (f"import sys; out = sys.stdout.buffer; out.write({COLOURED!r}); out.flush(); "
            f"sys.stderr.buffer.write({TRACKIO!r}); sys.exit(3)")
    assert run_attempt(_trainer(code), tmp_path) == ("failed", 3)
    run_attempt(_trainer(code), tmp_path, attempt=2)
    log = (tmp_path / "output.log").read_bytes()
    assert b"\x1b" not in log
    assert log == (PLAIN + PLAIN[:PLAIN.index(b"wandb")]) + b"\n===== attempt 2 =====\n" + (
        PLAIN + PLAIN[:PLAIN.index(b"wandb")])


def test_output_log_stays_live_while_the_trainer_runs(tmp_path):
    """What the trainer printed is in output.log while it still runs (then it is stopped from outside)."""
    stop = threading.Event()

    def attempt() -> None:
        with pytest.raises(Stopped):
            run_attempt(_trainer("import time; print('\\x1b[32mstarted\\x1b[0m', flush=True); time.sleep(60)"),
                        tmp_path, stop=stop)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and b"started" not in _read(tmp_path / "output.log"):
        time.sleep(0.05)
    assert thread.is_alive() and _read(tmp_path / "output.log") == b"started\n"
    stop.set()
    thread.join(20)
    assert not thread.is_alive()


def _read(path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def test_a_child_that_outlives_the_trainer_does_not_hold_the_attempt(tmp_path):
    """A process the trainer left behind (in its own session, so not stopped with the run's group) keeps
    the output pipe open: the attempt still ends LOG_DRAIN_S after the trainer, with the log it wrote."""
    pid_file = tmp_path / "child.pid"
    code = ("import subprocess, sys; child = subprocess.Popen([sys.executable, '-c', 'import time; "
            f"time.sleep(60)'], start_new_session=True); open({str(pid_file)!r}, 'w').write(str(child.pid)); "
            "print('\\x1b[1mbye\\x1b[0m')")
    start = time.monotonic()
    try:
        assert run_attempt(_trainer(code), tmp_path) == ("success", 0)
        assert time.monotonic() - start < LOG_DRAIN_S + 10
        assert (tmp_path / "output.log").read_bytes() == b"bye\n"
    finally:
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_what_the_trainer_printed_last_survives_a_runner_killed_with_minus_9(tmp_path):
    """The copier is a process of its own: the trainer prints, then its runner dies at once (the trainer
    SIGKILLs it here, as the out-of-memory killer might); the line still reaches output.log."""
    trainer = _trainer("import os, signal; print('step\\n' * 250_000 + '\\x1b[31mlast words\\x1b[0m', flush=True); "
                       "os.kill(os.getppid(), signal.SIGKILL)")  # 1 MB: the pipe still holds some when it dies
    runner = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                             "from lib.run.process import run_attempt; run_attempt(sys.argv[2:], Path(sys.argv[1]))",
                             str(tmp_path), *trainer], cwd=ROOT, timeout=60)
    assert runner.returncode == -signal.SIGKILL
    expected = b"step\n" * 250_000 + b"last words\n"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _read(tmp_path / "output.log") != expected:
        time.sleep(0.05)
    assert _read(tmp_path / "output.log")[-20:] == expected[-20:]


@pytest.mark.parametrize("coloured", [False, True], ids=["plain", "coloured"])
def test_a_large_log_passes_at_disk_speed(tmp_path, coloured):
    """64 MB of output through the pipe: most of a run's time is the trainer's, not the copy's."""
    line = b"\x1b[32mstep 1234 loss 2.345\x1b[0m lr 0.001\n" if coloured else b"step 1234 loss 2.345 lr 0.001 xx\n"
    code = (f"import sys; out = sys.stdout.buffer; block = {line!r} * 4096\n"
            f"for _ in range({64 * 2**20} // len(block)): out.write(block)\n")
    start = time.monotonic()
    assert run_attempt(_trainer(code), tmp_path) == ("success", 0)
    elapsed = time.monotonic() - start
    lines = 64 * 2**20 // len(line * 4096) * 4096
    stripped = line.replace(b"\x1b[32m", b"").replace(b"\x1b[0m", b"")
    assert (tmp_path / "output.log").stat().st_size == lines * len(stripped)
    assert elapsed < 20, elapsed  # about 0.2 s plain, 0.7 s coloured on 2 cores (a file directly: 0.05 s)
