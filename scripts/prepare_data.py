#!/usr/bin/env python3
"""Tokenize a GPT-2 text corpus once into DATA_DIR/<source>/train.bin, val.bin
and meta.json: `python scripts/prepare_data.py --source finewebedu|shakespeare|
tinystories|local --data-dir D [--path FILE] [--token-cap N]`.
A thin wrapper: the logic lives in lib/data/text.py and lib/data/text_sources.py."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Scripts run as files, so the project root is not on sys.path by itself.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib.data.text import prepare_text  # noqa: E402
from lib.data.text_sources import TEXT_SOURCES  # noqa: E402
from lib.errors import run_cli  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, choices=list(TEXT_SOURCES), help="which corpus")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="DATA_DIR (default: ./data)")
    parser.add_argument("--path", type=Path, default=None, help="the text file for --source local "
                        "(plain UTF-8 text, or .jsonl/.parquet with a 'text' column)")
    parser.add_argument("--token-cap", type=int, default=None,
                        help="stop after this many tokens, train and val together (default: the whole source)")
    args = parser.parse_args(argv)
    print(prepare_text(args.source, args.data_dir, args.token_cap, args.path))


if __name__ == "__main__":
    run_cli(main)
