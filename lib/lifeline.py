"""Processes that die with their parent, whatever state they are in.

Linux sends a child the signal set by prctl(PR_SET_PDEATHSIG) when the thread
that started it dies, the runner killed by SIGKILL included. SIGKILL is the
one signal a stopped process (`kill -STOP`) cannot hold pending, so a
trainer, its memory sampler or a torchrun worker never outlives the runner
and `make continue` never races an orphan for the run's files. Elsewhere
(macOS) nothing is set and this module changes nothing.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1

# Set by a tiny exec shim rather than preexec_fn, which is unsafe once the
# runner has threads (one per local slot); the setting survives exec. The shim
# exits at once if the parent is already gone (it died before prctl).
_SHIM = ("import ctypes, os, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGKILL); "
         "os.getppid() == int(sys.argv[1]) or os._exit(137); os.execvp(sys.argv[2], sys.argv[2:])")


def with_parent_death_signal(command: list[str]) -> list[str]:
    """`command`, wrapped so that it is SIGKILLed when this process dies (Linux); unchanged elsewhere."""
    if sys.platform != "linux":
        return list(command)
    return [sys.executable, "-S", "-c", _SHIM, str(os.getpid()), *command]


def die_with_parent() -> None:
    """Ask for SIGKILL when this process's parent dies (a torchrun worker, whose
    launcher is the trainer); exit at once if the parent is already gone."""
    if sys.platform != "linux":
        return
    parent = os.getppid()
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(137)
