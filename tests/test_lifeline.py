"""lib/lifeline.py: SIGKILL as parent-death signal, through the C library find_library names.

The exec shim (python -S -c, nothing of ours imported) sets PR_SET_PDEATHSIG
in the program it execs, with the library the runner found, with none found
and with one that does not load; it exits 137 when its parent is already
gone; die_with_parent() sets it in-process. Read back with PR_GET_PDEATHSIG.
(That a stopped trainer and its sampler die with a killed runner is
tests/test_hostile.py's.) About a second.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

import pytest

from lib import lifeline
from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")

PR_GET_PDEATHSIG = 2
# Prints the parent-death signal of the process it runs in.
READ_SIGNAL = ("import ctypes; v = ctypes.c_int(-1); "
               "ctypes.CDLL(None).prctl(2, ctypes.byref(v)); print(v.value)")


def death_signal(command: list[str], cwd: str = "/") -> subprocess.CompletedProcess:
    """Run from / by default: the shim must need nothing of this project."""
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=cwd)


def test_the_library_is_the_one_find_library_names():
    lifeline.libc_name.cache_clear()
    name = lifeline.libc_name()
    import ctypes.util

    assert name == (ctypes.util.find_library("c") or "")
    assert lifeline.load_libc().prctl  # loads, and has prctl


def test_the_shim_sets_sigkill_in_the_program_it_execs():
    assert death_signal([sys.executable, "-c", READ_SIGNAL]).stdout.strip() == "0"  # not inherited by default
    done = death_signal(lifeline.with_parent_death_signal([sys.executable, "-c", READ_SIGNAL]))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(int(signal.SIGKILL))


@pytest.mark.parametrize("library", ["", "libno-such-c-library.so.99"], ids=["none-found", "does-not-load"])
def test_the_shim_falls_back_on_the_loaded_c_library(library):
    command = [sys.executable, "-S", "-c", lifeline._SHIM, library, str(os.getpid()), sys.executable, "-c",
               READ_SIGNAL]
    done = death_signal(command)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(int(signal.SIGKILL))


def test_the_shim_exits_137_when_its_parent_is_already_gone():
    wrapped = lifeline.with_parent_death_signal([sys.executable, "-c", "print('ran')"])
    pid_at = wrapped.index(str(os.getpid()))
    wrapped[pid_at] = "1"  # a parent other than ours: as if the runner had died before prctl
    done = death_signal(wrapped)
    assert done.returncode == 137 and "ran" not in done.stdout


def test_die_with_parent_sets_sigkill_in_this_process():
    code = "from lib.lifeline import die_with_parent; die_with_parent(); " + READ_SIGNAL
    done = death_signal([sys.executable, "-c", code], cwd=str(ROOT))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(int(signal.SIGKILL))


def test_without_a_library_name_the_loaded_symbols_serve(monkeypatch):
    lifeline.libc_name.cache_clear()
    monkeypatch.setattr(lifeline.ctypes.util, "find_library", lambda name: None)
    try:
        assert lifeline.libc_name() == ""
        assert lifeline.load_libc().prctl
        assert lifeline.with_parent_death_signal(["x"])[4] == ""
    finally:
        lifeline.libc_name.cache_clear()


def test_a_library_that_does_not_load_falls_back_on_the_loaded_symbols(monkeypatch):
    lifeline.libc_name.cache_clear()
    monkeypatch.setattr(lifeline.ctypes.util, "find_library", lambda name: "libno-such-c-library.so.99")
    try:
        libc = lifeline.load_libc()
        value = ctypes.c_int(-1)
        assert libc.prctl(PR_GET_PDEATHSIG, ctypes.byref(value)) == 0 and value.value >= 0
    finally:
        lifeline.libc_name.cache_clear()
