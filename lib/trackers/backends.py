"""Experiment trackers (W&B, Trackio) behind one small interface.

Owns: the Tracker interface (start, log, finish), its wandb and trackio
backends, the guard that turns any failure of a tracker into one warning and
switches that tracker off for the rest of the run (metrics.json stays the
record), and the checks `make` runs before a matrix starts (package present,
a W&B login when online). What is logged is decided by lib/train/loop.py and
lib/train/harness.py; nothing here changes a run's result.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import netrc
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Optional
from urllib.parse import urlparse

from lib.errors import UserError
from lib.trackers.settings import TrackerSettings

INSTALL_HINT = "`make` installs it (requirements-trackers.txt), or run .venv/bin/pip install -r requirements-trackers.txt"
OFFLINE_MODES = ("offline", "disabled", "dryrun")  # WANDB_MODE values that need no login


class Tracker:
    """One experiment tracker; the base class logs nothing."""

    name = "none"

    def start(self, run: str, config: dict[str, Any], group: str) -> None:
        """Open run `run` (its name) in group `group` (the result directory) with its configuration."""

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record `metrics` at optimizer step `step` (steps never decrease)."""

    def finish(self) -> None:
        """Close the run; nothing is logged afterwards."""


class WandbTracker(Tracker):
    name = "wandb"

    def __init__(self, settings: TrackerSettings, run_dir: Path) -> None:
        self.settings, self.run_dir = settings, run_dir
        self.run: Any = None

    def start(self, run: str, config: dict[str, Any], group: str) -> None:
        import wandb

        # offline files go under the run folder (<run>/wandb/offline-run-*), never the cwd; console
        # capture off: the trainer's stdout already is output.log
        self.run = wandb.init(project=self.settings.project, entity=self.settings.wandb_entity or None, name=run,
                              group=group, config=config, dir=str(self.run_dir),
                              mode="offline" if self.settings.wandb_offline else None,
                              settings=wandb.Settings(console="off", silent=True))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()


class TrackioTracker(Tracker):
    name = "trackio"

    def __init__(self, settings: TrackerSettings, store: Path) -> None:
        self.settings, self.store = settings, store
        self.run: Any = None

    def start(self, run: str, config: dict[str, Any], group: str) -> None:
        # trackio reads its store's folder from TRACKIO_DIR once, when imported; this process
        # is one run's trainer, so setting it here keeps the store inside the result directory
        os.environ["TRACKIO_DIR"] = str(self.store)
        import trackio

        self.run = trackio.init(project=self.settings.project, name=run, group=group, config=config,
                                embed=False, auto_log_gpu=False, auto_log_cpu=False)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


class Guarded(Tracker):
    """A tracker whose first failure (import, network, anything it raises) is one
    warning and switches it off: a tracker never fails a run."""

    def __init__(self, inner: Tracker, warn: Callable[[str], None] = _warn) -> None:
        self.inner, self.warn, self.active = inner, warn, True
        self.name = inner.name

    def _call(self, what: str, method: Callable[..., None], *args: Any) -> None:
        if not self.active:
            return
        try:
            method(*args)
        except Exception as exc:  # noqa: BLE001 - any tracker failure, by design
            self.active = False
            self.warn(f"{self.name} tracker failed in {what} ({type(exc).__name__}: {str(exc)[:200]}); "
                      "switched off for this run, metrics.json stays its record")

    def start(self, run: str, config: dict[str, Any], group: str) -> None:
        self._call("start", self.inner.start, run, config, group)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._call("log", self.inner.log, step, metrics)

    def finish(self) -> None:
        self._call("finish", self.inner.finish)
        self.active = False


class Trackers(Tracker):
    """Every enabled tracker of a run, each guarded; with none, every call does nothing."""

    def __init__(self, trackers: list[Tracker], warn: Callable[[str], None] = _warn) -> None:
        self.trackers = [Guarded(t, warn) for t in trackers]

    @property
    def active(self) -> bool:
        return any(t.active for t in self.trackers)

    def start(self, run: str, config: dict[str, Any], group: str) -> None:
        for tracker in self.trackers:
            tracker.start(run, config, group)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.active:
            numbers = scalars(metrics)
            for tracker in self.trackers:
                tracker.log(step, numbers)

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of `metrics` (booleans as 0/1); text and empty values are not curves."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, (bool, int, float)) and math.isfinite(float(value)):
            out[key] = float(value)
    return out


def open_trackers(settings: TrackerSettings, run_dir: Path) -> Trackers:
    """The trackers `settings` enable for the run in `run_dir`, not yet started."""
    trackers: list[Tracker] = []
    if settings.wandb:
        trackers.append(WandbTracker(settings, run_dir))
    if settings.trackio:
        trackers.append(TrackioTracker(settings, run_dir.parent / "trackio"))
    return Trackers(trackers)


# -- before a matrix starts ----------------------------------------------

def check_trackers(settings: TrackerSettings, env: Mapping[str, str]) -> None:
    """Stop before any run when an enabled tracker cannot work: its package is
    missing, or W&B is online without a login. `env`: the caller's environment."""
    for name, enabled in (("wandb", settings.wandb), ("trackio", settings.trackio)):
        if enabled and importlib.util.find_spec(name) is None:
            raise UserError(f"CONFIG_ENABLE_{name.upper()}=y but the {name} package is not installed: {INSTALL_HINT}")
    offline = settings.wandb_offline or env.get("WANDB_MODE", "").lower() in OFFLINE_MODES
    if settings.wandb and not offline and not has_wandb_login(env):
        raise UserError("CONFIG_ENABLE_WANDB=y online but no W&B login found (WANDB_API_KEY, ~/.netrc): run "
                        "`wandb login`, or work offline with CONFIG_WANDB_OFFLINE=y or WANDB_MODE=offline")


def has_wandb_login(env: Mapping[str, str]) -> bool:
    """Whether W&B has an API key here, without network: the environment, the netrc
    entry of its host, then wandb's own lookup (settings files)."""
    if env.get("WANDB_API_KEY"):
        return True
    host = urlparse(env.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    with contextlib.suppress(OSError, netrc.NetrcParseError):
        if netrc.netrc(env.get("NETRC") or None).authenticators(host):
            return True
    return bool(_wandb_api_key())


def _wandb_api_key() -> Optional[str]:
    """wandb.api.api_key, its deprecation notice silenced; None where this wandb lacks it."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            import wandb

            return wandb.api.api_key
        except Exception:  # noqa: BLE001 - an API that moved is "no key found", not a crash
            return None
