#!/usr/bin/env python3
"""Prepare datasets before training. `make data` (= `--config .config`) fetches
or tokenizes what every run of the configuration needs, exactly as `make`
would before its first run. `--source finewebedu|shakespeare|tinystories|local
--data-dir D [--path FILE] [--token-cap N]` tokenizes one GPT-2 corpus into
D/<source>/train.bin, val.bin and meta.json.
A thin wrapper: the logic lives in lib/run/launch.py and lib/data/."""
from __future__ import annotations

import argparse
from pathlib import Path

import _path  # noqa: F401  (the project root on sys.path)
from lib.data.text import prepare_text  # noqa: E402
from lib.data.text_sources import TEXT_SOURCES  # noqa: E402
from lib.errors import run_cli  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=None,
                        help="prepare what the runs of this configuration need (make data)")
    parser.add_argument("--source", choices=list(TEXT_SOURCES), help="which corpus")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="DATA_DIR (default: ./data)")
    parser.add_argument("--path", type=Path, default=None, help="the text file for --source local "
                        "(plain UTF-8 text, or .jsonl/.parquet with a 'text' column)")
    parser.add_argument("--token-cap", type=int, default=None,
                        help="stop after this many tokens, train and val together (default: the whole source)")
    args = parser.parse_args(argv)
    if args.config is not None:
        from lib.config import load_settings
        from lib.matrix import expand
        from lib.run.launch import prepare_data

        prepare_data(expand(load_settings(args.config)))
    elif args.source is None:
        parser.error("give --config FILE or --source NAME")
    else:
        print(prepare_text(args.source, args.data_dir, args.token_cap, args.path))


if __name__ == "__main__":
    run_cli(main)
