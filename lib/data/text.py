"""GPT-2 token files: prepared once, opened as memmaps, sampled as windows.

Owns `<data_dir>/<source>/` (`local-<stem>-<hash>/` for a local file) with
nanoGPT's layout: `train.bin` and `val.bin` hold uint16 GPT-2 token ids
back to back, `meta.json` says what they hold and is written last, so its
presence (with matching file sizes) is what "prepared" means. Documents are
separated by <|endoftext|>; every 10th document goes to val, or the last
10% of a source that is one running text (Shakespeare, a plain text file).
Where the text comes from is lib/data/text_sources.py's concern.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import tiktoken
import torch

from lib.data.download import temp_beside
from lib.data.progress import PreparationProgress
from lib.data.text_sources import TEXT_SOURCES, DocumentStream, SourceUnavailable, local_dir_name, text_files
from lib.data.tokenizer import BPE_RANKS, BPE_RANKS_SHA256, EOT_TOKEN, VOCAB_SIZE, gpt2_encoding
from lib.errors import UserError, escaped
from lib.jsonio import read_json, write_json_atomic

VAL_EVERY = 10  # every 10th document (or the last tenth of a running text) is validation
BATCH_CHARS = 1 << 22  # text handed to tiktoken's threads per call
TOKEN_DTYPE = np.uint16  # GPT-2 ids stop at 50256
META_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class TokenData:
    """A prepared corpus: read-only uint16 memmaps and their meta.json."""

    train: np.ndarray
    val: np.ndarray
    meta: dict
    path: Path


def prepared_dir(source: str, data_dir: str | Path, path: str | Path | None = None) -> Path:
    """Where `prepare_text` puts (and `load_tokens` finds) a source's files."""
    if source == "local":
        if path is None:
            raise UserError("the local text source needs a file: pass --path FILE (GPT2_DATA_PATH in the config)")
        return Path(data_dir) / local_dir_name(Path(path))
    return Path(data_dir) / source


def prepare_text(source: str, data_dir: str | Path, token_cap: int | None = None, path: str | Path | None = None,
                 *, progress_interval_s: float = 5.0) -> Path:
    """Tokenize `source` into train.bin/val.bin/meta.json once; returns their
    folder. A complete earlier preparation with the same source, cap (and
    file) is reused. `path` is read only by the "local" source."""
    spec = TEXT_SOURCES.get(source)
    if spec is None:
        raise UserError(f"unknown text source {source!r}; choose one of: {', '.join(TEXT_SOURCES)}")
    if token_cap is not None and (isinstance(token_cap, bool) or not isinstance(token_cap, int) or token_cap < 2):
        raise UserError(f"token cap must be an integer >= 2 or None (no cap), got {token_cap!r}")
    data_dir = Path(data_dir)
    file = Path(path) if source == "local" and path is not None else None
    out_dir = prepared_dir(source, data_dir, file)
    wanted = _identity(source, token_cap, file)
    old = _complete_meta(out_dir)
    if old is not None and all(old.get(key) == value for key, value in wanted.items()):
        print(escaped(f"{source}: using {out_dir} ({old['train_tokens']:,} train / {old['val_tokens']:,} val tokens)"))
        return out_dir
    progress = PreparationProgress(f"tokenizing {source}", token_cap, "tokens", progress_interval_s)
    try:
        stream = spec.open(data_dir, file)
        counts = _write_token_files(stream, out_dir, token_cap, progress)
    except SourceUnavailable as exc:
        cap_arg = f" --token-cap {token_cap}" if token_cap else ""
        remedy = spec.by_hand.format(source=source, data_dir=data_dir, out_dir=out_dir, cap_arg=cap_arg)
        held = ""
        if old is not None:
            held = f" ({out_dir} holds a preparation with token cap {old.get('token_cap')}; that cap reuses it)"
        raise UserError(f"{exc}; {remedy}{held}") from None
    encoding = gpt2_encoding()
    meta = {
        "schema_version": META_SCHEMA_VERSION, **wanted, "origin": stream.origin,
        "tokenizer": encoding.name, "tokenizer_file": str(BPE_RANKS.relative_to(BPE_RANKS.parents[3])),
        "tokenizer_sha256": BPE_RANKS_SHA256, "tiktoken_version": tiktoken.__version__,
        "vocab_size": encoding.n_vocab, "eot_token": EOT_TOKEN, "dtype": np.dtype(TOKEN_DTYPE).name, **counts,
        "split": ("last 10% of the tokens of one running text to val" if stream.continuous else
                  f"by document: every {VAL_EVERY}th document (index % {VAL_EVERY} == {VAL_EVERY - 1}) to val; "
                  f"each document followed by <|endoftext|>"),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json_atomic(out_dir / "meta.json", meta)
    print(escaped(f"{progress.line(counts['train_tokens'] + counts['val_tokens'])}; "
                  f"{counts['train_tokens']:,} train / {counts['val_tokens']:,} val tokens in {out_dir}"), flush=True)
    return out_dir


def _identity(source: str, token_cap: int | None, file: Path | None) -> dict:
    """What must match for an earlier preparation to be reused."""
    identity = {"source": source, "token_cap": token_cap}
    if file is not None:
        if not (file.is_file() or file.is_dir()):
            raise UserError(f"{file}: text file or folder not found")
        stats = [f.stat() for f in (text_files(file) if file.is_dir() else [file])]
        identity |= {"origin_path": str(file.resolve()), "origin_bytes": sum(s.st_size for s in stats),
                     "origin_mtime_ns": max((s.st_mtime_ns for s in stats), default=0)}
        if file.is_dir():
            identity["origin_files"] = len(stats)
    return identity


def _complete_meta(out_dir: Path) -> dict | None:
    """meta.json if it exists and the .bin files have the sizes it states."""
    try:
        meta = read_json(out_dir / "meta.json")
        complete = all((out_dir / f"{split}.bin").stat().st_size == 2 * meta[f"{split}_tokens"] > 0
                       for split in ("train", "val"))
    except (UserError, OSError, KeyError, TypeError):
        return None
    return meta if complete else None


def _write_token_files(stream: DocumentStream, out_dir: Path, token_cap: int | None,
                       progress: PreparationProgress) -> dict:
    """Tokenize into temp files beside the targets, then rename: an interrupted
    run leaves the previous preparation (or nothing), never a half file."""
    temps = {split: temp_beside(out_dir / f"{split}.bin") for split in ("train", "val")}
    try:
        with open(temps["train"], "wb") as train, open(temps["val"], "wb") as val:
            documents = _tokenize(stream, (train, val), token_cap, progress)
            for handle in (train, val):
                handle.flush()
                os.fsync(handle.fileno())
        if stream.continuous:
            _move_tail(temps["train"], temps["val"])
        counts = {f"{split}_tokens": temps[split].stat().st_size // 2 for split in ("train", "val")}
        if not all(counts.values()):
            raise UserError(f"{stream.origin}: too little text for a train/val split "
                            f"({counts['train_tokens']} train, {counts['val_tokens']} val tokens)")
        (out_dir / "meta.json").unlink(missing_ok=True)  # the old one no longer describes the files
        for split, tmp in temps.items():
            os.replace(tmp, out_dir / f"{split}.bin")
        return {**counts, "documents": documents}
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        close = getattr(stream.documents, "close", None)
        if close:
            close()  # stop a stream cut short by the cap


def _tokenize(stream: DocumentStream, files: tuple, token_cap: int | None, progress: PreparationProgress) -> int | None:
    """Write ids to files[0] (train) or files[1] (val); returns the number of
    documents, or None for a running text."""
    encoding = gpt2_encoding()
    total = documents = 0
    for batch in _text_batches(stream.documents):
        for ids in encoding.encode_ordinary_batch(batch):
            if not stream.continuous:
                ids.append(EOT_TOKEN)
            if token_cap is not None:
                ids = ids[:token_cap - total]
            to_val = not stream.continuous and documents % VAL_EVERY == VAL_EVERY - 1
            files[to_val].write(np.asarray(ids, dtype=TOKEN_DTYPE).tobytes())
            total += len(ids)
            documents += 1
            if token_cap is not None and total >= token_cap:
                return None if stream.continuous else documents
        progress.update(total)
    return None if stream.continuous else documents


def _text_batches(texts: Iterable[str]) -> Iterator[list[str]]:
    """Group texts to about BATCH_CHARS, so tiktoken's threads get enough work."""
    iterator = iter(texts)
    while first := list(islice(iterator, 1)):
        batch, size = first, len(first[0])
        while size < BATCH_CHARS and (more := list(islice(iterator, 1))):
            batch += more
            size += len(more[0])
        yield batch


def _move_tail(train: Path, val: Path) -> None:
    """Split a running text by position: the last tenth of the tokens moves
    from the train file into the val file."""
    total = train.stat().st_size // 2
    keep = total - total // VAL_EVERY
    with open(train, "r+b") as source, open(val, "wb") as target:
        source.seek(2 * keep)
        target.write(source.read())
        source.truncate(2 * keep)


def load_tokens(prepared: str | Path) -> TokenData:
    """Open a prepared folder's train.bin and val.bin as read-only memmaps."""
    prepared = Path(prepared)
    meta = _complete_meta(prepared)
    if meta is None:
        raise UserError(f"{prepared}: no complete token files (train.bin, val.bin and a meta.json that "
                        f"matches their sizes); run `python scripts/prepare_data.py` for this source first")
    if meta.get("dtype") != np.dtype(TOKEN_DTYPE).name or meta.get("vocab_size") != VOCAB_SIZE:
        raise UserError(f"{prepared / 'meta.json'}: dtype {meta.get('dtype')}, vocabulary {meta.get('vocab_size')}; "
                        f"expected {np.dtype(TOKEN_DTYPE).name} GPT-2 tokens ({VOCAB_SIZE})")
    return TokenData(train=np.memmap(prepared / "train.bin", dtype=TOKEN_DTYPE, mode="r"),
                     val=np.memmap(prepared / "val.bin", dtype=TOKEN_DTYPE, mode="r"), meta=meta, path=prepared)


def get_batch(split_data: np.ndarray, block_size: int, batch_size: int, generator: torch.Generator | None,
              device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch_size` random windows: inputs x and next-token targets y, int64
    [batch_size, block_size] on `device`."""
    windows = len(split_data) - block_size
    if windows < 1:
        raise UserError(f"a split of {len(split_data)} tokens holds no window of block_size + 1 = "
                        f"{block_size + 1} tokens; lower GPT2_BLOCK_SIZE or prepare more text")
    starts = torch.randint(windows, (batch_size,), generator=generator).numpy()
    # One fancy-indexed read of all windows from the memmap, then split into x and y.
    rows = torch.from_numpy(split_data[starts[:, None] + np.arange(block_size + 1)].astype(np.int64))
    x, y = rows[:, :-1].contiguous(), rows[:, 1:].contiguous()
    device = torch.device(device)
    if device.type == "cuda":  # pinned pages let the copy overlap with compute
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)
