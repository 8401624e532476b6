"""Processes that die with their parent, whatever state they are in.

Linux sends a child the signal set by prctl(PR_SET_PDEATHSIG) when the thread
that started it dies, the runner killed by SIGKILL included. SIGKILL is the
one signal a stopped process (`kill -STOP`) cannot hold pending, so a
trainer, its memory sampler or a torchrun worker never outlives the runner
and `make continue` never races an orphan for the run's files. Elsewhere
(macOS) nothing is set and this module changes nothing.

prctl is called in the C library that ctypes.util.find_library("c") names
(libc.so.6 on glibc); where it names none, or that one does not load, in the
symbols already loaded into the process (dlopen(NULL): the C library Python
itself runs on, glibc or musl).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import signal
import sys

PR_SET_PDEATHSIG = 1

# Set by a tiny exec shim rather than preexec_fn, which is unsafe once the
# runner has threads (one per local slot); the setting survives exec. The shim
# exits at once if the parent is already gone (it died before prctl). It runs
# as `python -S -c`, imports nothing of ours and finds no library itself: the
# runner passes the C library's name (found once, "" for none) as argv[1],
# its own pid as argv[2] and the command after them.
_SHIM = ("import ctypes, os, signal, sys\n"
         "try:\n"
         "    libc = ctypes.CDLL(sys.argv[1] or None)\n"
         "except OSError:\n"
         "    libc = ctypes.CDLL(None)\n"
         "libc.prctl(1, signal.SIGKILL)\n"
         "os.getppid() == int(sys.argv[2]) or os._exit(137)\n"
         "os.execvp(sys.argv[3], sys.argv[3:])\n")


@functools.lru_cache(maxsize=1)
def libc_name() -> str:
    """The C library's name as find_library("c") gives it, "" when it finds none (once per process:
    on Linux it asks ldconfig)."""
    try:
        return ctypes.util.find_library("c") or ""
    except (OSError, ValueError):  # a missing or odd ldconfig/gcc: fall back on the loaded symbols
        return ""


def load_libc() -> ctypes.CDLL:
    """The C library (libc_name()), else the symbols already loaded into this process."""
    try:
        return ctypes.CDLL(libc_name() or None)
    except OSError:
        return ctypes.CDLL(None)


def with_parent_death_signal(command: list[str]) -> list[str]:
    """`command`, wrapped so that it is SIGKILLed when this process dies (Linux); unchanged elsewhere."""
    if sys.platform != "linux":
        return list(command)
    return [sys.executable, "-S", "-c", _SHIM, libc_name(), str(os.getpid()), *command]


def die_with_parent() -> None:
    """Ask for SIGKILL when this process's parent dies (a torchrun worker, whose
    launcher is the trainer); exit at once if the parent is already gone."""
    if sys.platform != "linux":
        return
    parent = os.getppid()
    load_libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(137)
