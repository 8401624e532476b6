#!/usr/bin/env python3
"""Configuration commands behind `make defconfig-NAME`, `olddefconfig`,
`savedefconfig` and `listdefconfigs`; all through kconfiglib (lib/config)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import _path  # noqa: F401
from lib.config import ROOT, defconfig_header, defconfig_name, load_kconfig, settings_from_kconfig
from lib.errors import UserError, run_cli
from lib.matrix import expand
from lib.names import is_safe_name
from lib.trackers.settings import apply_tracker_choice

DEFCONFIGS = ROOT / "defconfigs"


def defconfig_path(name: str) -> Path:
    if not is_safe_name(name):
        raise UserError(f"{name!r} is not a defconfig name (`make listdefconfigs` lists them)")
    path = DEFCONFIGS / name
    if not path.is_file():
        raise UserError(f"no defconfig named {name!r} in defconfigs/ (`make listdefconfigs` lists them)")
    return path


def normalise(source: Path, target: Path, tracker: str | None = None, name: str | None = None) -> None:
    """Load `source` (upstream idioms translated), check it, write a full `target`;
    `tracker` (make's TRACKER=wandb,trackio|none) then picks the trackers. `name` is the
    defconfig `source` is (else the one it was loaded from), recorded in `target`'s first line."""
    loaded = load_kconfig(source)
    loaded.check_names(source.name)
    ignored = loaded.ignored_message(source.name)
    if ignored:
        print(f"warning: {ignored}", file=sys.stderr)
    for message in loaded.warnings:
        print(f"warning: {message}", file=sys.stderr)
    if loaded.upstream:
        print(f"note: {source.name} is an upstream AdamWPrune defconfig: read with upstream's defaults and ranges "
              "(CONFIG_UPSTREAM_DEFCONFIG=y in the written file)", file=sys.stderr)
    if tracker:
        enabled = apply_tracker_choice(loaded.kconf, tracker)
        print(f"trackers: {', '.join(enabled) or 'none'} (TRACKER={tracker})")
    # stop on a bad value, or a selection with no runs, now rather than at `make`
    expand(settings_from_kconfig(loaded.kconf))
    name = name or defconfig_name(source)
    loaded.kconf.write_config(str(target), header=defconfig_header(name) if name else None, save_old=False)
    print(f"wrote {target.name} from {source.relative_to(ROOT) if source.is_relative_to(ROOT) else source}")


def first_comment(path: Path) -> str:
    for line in path.read_text(errors="replace").splitlines():
        text = line.lstrip("#").strip()
        if line.startswith("#") and text and not text.startswith("SPDX"):
            return text
    return ""


def list_defconfigs() -> None:
    # only what `make defconfig-NAME` loads: not an editor's hidden swap file or a folder
    names = sorted(p.name for p in DEFCONFIGS.iterdir() if p.is_file() and is_safe_name(p.name))
    width = max(map(len, names), default=0)
    for name in names:
        print(f"  {name:<{width}}  {first_comment(DEFCONFIGS / name)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    # the name comes from the environment under make (DEFCONFIG_NAME), never through recipe text
    sub.add_parser("defconfig").add_argument("name", nargs="?", default=os.environ.get("DEFCONFIG_NAME"))
    sub.add_parser("olddefconfig")
    sub.add_parser("savedefconfig").add_argument("--out", default="defconfig")
    sub.add_parser("listdefconfigs")
    parser.add_argument("--config", default=str(ROOT / ".config"), help="the .config to read or write")
    args = parser.parse_args()
    config = Path(args.config)
    if args.command == "defconfig":
        if not args.name:
            raise UserError("give a defconfig name: make defconfig-NAME (`make listdefconfigs` lists them)")
        # TRACKER reaches us literally through the environment (the Makefile's USER_VARS)
        normalise(defconfig_path(args.name), config, os.environ.get("TRACKER") or None, name=args.name)
    elif args.command == "olddefconfig":
        normalise(config, config)
    elif args.command == "savedefconfig":
        loaded = load_kconfig(config)
        loaded.kconf.write_min_config(args.out)
        print(f"wrote minimal configuration to {args.out}")
    else:
        list_defconfigs()


if __name__ == "__main__":
    run_cli(main)
