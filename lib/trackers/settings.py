"""What the experiment trackers are told, from Kconfig (lib/trackers/Kconfig).

Owns the TrackerSettings dataclass, its defaults (the project name as
upstream makes it) and the `TRACKER=wandb,trackio` choice of
`make defconfig-NAME`. It reads no environment: scripts/kconfig.py passes
TRACKER in. The trackers themselves live in lib/trackers/backends.py.
"""
from __future__ import annotations

import hashlib
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lib.errors import UserError, clipped, escaped

if TYPE_CHECKING:  # a trainer reads TrackerSettings from run.json without kconfiglib
    import kconfiglib

TRACKERS = {"wandb": "ENABLE_WANDB", "trackio": "ENABLE_TRACKIO"}


@dataclass(frozen=True)
class TrackerSettings:
    """Which trackers each run logs to and under which names; not part of any run's result."""

    wandb: bool = False
    trackio: bool = False
    project: str = ""
    run_name: str = ""  # a prefix of each run's name; "" = the run ID alone
    wandb_entity: str = ""
    wandb_offline: bool = False

    @property
    def enabled(self) -> bool:
        return self.wandb or self.trackio

    def run_name_for(self, run_id: str) -> str:
        return f"{self.run_name}_{run_id}" if self.run_name else run_id

    def describe(self) -> str:
        """One line naming the trackers and where they log (`none` when off): `wandb, project "p",
        entity "e"`. Values cut to 60 characters, control characters escaped: the settings may be
        a stranger's (the config.txt of a result directory `make continue` names)."""
        if not self.enabled:
            return "none"
        def quoted(value: str) -> str:
            return '"' + escaped(clipped(value)) + '"'

        names = [name for name in TRACKERS if getattr(self, name)]
        parts = [" and ".join(names), f"project {quoted(self.project)}"]
        parts += [f"run names {quoted(self.run_name)}_<run id>"] if self.run_name else []
        parts += [f"W&B entity {quoted(self.wandb_entity)}"] if self.wandb_entity else []
        parts += ["W&B offline"] if self.wandb and self.wandb_offline else []
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_json(cls, data: Any) -> "TrackerSettings":
        """From run.json's "tracking" (absent or not an object: no trackers)."""
        if not isinstance(data, dict):
            return cls()
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def default_project(models: tuple[str, ...], root: Path) -> str:
    """Upstream's `{model}-{checksum}` (scripts/generate-project-name.sh): the model, or
    "adamwprune" for several, and an md5 of this host and project folder, so two
    checkouts on two machines do not mix their runs."""
    model = models[0] if len(models) == 1 else "adamwprune"
    digest = hashlib.md5(f"{platform.node()}-{root}".encode()).hexdigest()[:8]
    return f"{re.sub(r'[^a-zA-Z0-9-]', '-', model)}-{digest}"


def tracker_settings(kconf: kconfiglib.Kconfig, models: tuple[str, ...], root: Path) -> TrackerSettings:
    syms = kconf.syms
    wandb, trackio = (syms[TRACKERS[name]].tri_value == 2 for name in ("wandb", "trackio"))
    if not (wandb or trackio):
        return TrackerSettings()
    return TrackerSettings(
        wandb=wandb, trackio=trackio,
        project=syms["TRACKER_PROJECT"].str_value.strip() or default_project(models, root),
        run_name=syms["TRACKER_RUN_NAME"].str_value.strip(),
        wandb_entity=syms["WANDB_ENTITY"].str_value.strip() if wandb else "",
        wandb_offline=wandb and syms["WANDB_OFFLINE"].tri_value == 2)


def apply_tracker_choice(kconf: kconfiglib.Kconfig, choice: str) -> list[str]:
    """Set ENABLE_WANDB/ENABLE_TRACKIO from `TRACKER=wandb,trackio` (or none);
    returns the trackers now enabled. An unknown name is a UserError."""
    names = [part.strip().lower() for part in choice.split(",") if part.strip()]
    unknown = [name for name in names if name not in (*TRACKERS, "none")]
    if unknown or ("none" in names and len(names) > 1):
        raise UserError(f"TRACKER={choice!r} is not valid; allowed: wandb, trackio, wandb,trackio or none")
    for name, symbol in TRACKERS.items():
        kconf.syms[symbol].set_value(2 if name in names else 0)
    return [name for name in TRACKERS if name in names]
