"""Where GPT-2 text comes from: each source yields its documents as strings.

Owns the four corpora by name (the GPT2_DATASET_* choice): FineWeb-Edu and
TinyStories streamed from the Hugging Face hub through `datasets`,
tiny-shakespeare downloaded once, and a local file (plain text, or JSON
lines / Parquet with a "text" column). It does not tokenize or write
anything but the downloaded input.txt; lib/data/text.py does that. When a
source cannot be reached it raises SourceUnavailable quickly (no retries
for minutes), and the caller says how to provide the data by hand.
"""
from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from dataclasses import dataclass
from itertools import chain
from http.client import HTTPException
from pathlib import Path
from typing import Callable, Iterable, Iterator
from urllib.parse import urlparse

from lib.data.download import download_file
from lib.errors import UserError

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
HUB_PROBE_TIMEOUT_S = 10.0
TEXT_CHUNK_CHARS = 1 << 20  # plain text files are read and tokenized this much at a time


class SourceUnavailable(Exception):
    """The source cannot be reached or read; the message says why, in one line."""


@dataclass(frozen=True)
class DocumentStream:
    """Texts to tokenize and how to split them into train and val."""

    documents: Iterable[str]
    # True: the pieces are one running text (no <|endoftext|> between them)
    # and the split is by position, the last 10% of tokens to val.
    # False: separate documents, every 10th one to val.
    continuous: bool
    origin: str  # dataset id, URL or path, for meta.json


@dataclass(frozen=True)
class HubDataset:
    """A `datasets.load_dataset` call; data_files makes it a local builder
    ("json", "parquet") that needs no network."""

    path: str
    name: str | None = None
    split: str = "train"
    text_field: str = "text"
    data_files: str | None = None


HUB_DATASETS = {
    "finewebedu": HubDataset("HuggingFaceFW/fineweb-edu", name="sample-10BT"),
    # Its own validation split is ignored: every source splits 90/10 the same way.
    "tinystories": HubDataset("roneneldan/TinyStories"),
}


def hub_documents(dataset: HubDataset) -> Iterator[str]:
    """Stream the text column of a `datasets` dataset, document by document
    (check a hub dataset with _check_hub_reachable first)."""
    import datasets  # imported late: about a second, and only this source needs it
    import datasets.exceptions

    where = f"{dataset.path}" + (f" ({dataset.name})" if dataset.name else "")
    count = 0
    try:
        stream = datasets.load_dataset(dataset.path, name=dataset.name, split=dataset.split,
                                       data_files=dataset.data_files, streaming=True)
        for row in stream:
            text = row.get(dataset.text_field)
            if not isinstance(text, str):
                raise UserError(f"{where}: row {count} has no text column {dataset.text_field!r} "
                                f"(columns: {', '.join(row)})")
            count += 1
            yield text
    except OSError as exc:  # network, missing files; datasets' own errors derive from it
        if count:
            raise SourceUnavailable(f"lost {where} after {count:,} documents ({_one_line(exc)}); nothing was "
                                    f"kept, run the preparation again") from None
        raise SourceUnavailable(f"cannot stream {where} ({_one_line(exc)})") from None
    except (ValueError, datasets.exceptions.DatasetsError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        name = dataset.data_files or where
        raise UserError(f"{name}: cannot read as {dataset.path} data ({_one_line(exc)})") from None


def _check_hub_reachable(dataset: str) -> None:
    """Fail in seconds where `datasets` would retry for about half a minute."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise SourceUnavailable(f"cannot stream {dataset}: HF_HUB_OFFLINE is set")
    url = f"{constants.ENDPOINT.rstrip('/')}/api/datasets/{dataset}"
    try:  # urllib honours HTTPS_PROXY like huggingface_hub does
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=HUB_PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        pass  # the hub answered; load_dataset reports what the status means
    except (OSError, HTTPException) as exc:
        host = urlparse(url).hostname
        raise SourceUnavailable(f"cannot reach {host} to stream {dataset} ({_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(getattr(exc, "reason", None) or exc).split())  # URLError: the reason, unwrapped
    return text[:300] or type(exc).__name__


def text_pieces(path: Path, chunk_chars: int = TEXT_CHUNK_CHARS) -> Iterator[str]:
    """A UTF-8 file in pieces whose tokens, concatenated, equal those of the
    whole text: pieces end after a newline that sits between two
    alphanumeric characters, where the GPT-2 pre-tokenizer always splits."""
    carry = ""
    try:
        with open(path, encoding="utf-8", newline="") as handle:  # keep \r\n: it changes tokens
            for block in iter(lambda: handle.read(chunk_chars), ""):
                text = carry + block
                cut = _last_safe_cut(text)
                if cut:
                    yield text[:cut]
                carry = text[cut:]
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start} of a block)") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if carry:
        yield carry


def _last_safe_cut(text: str) -> int:
    index = text.rfind("\n")
    while index > 0:
        if index + 1 < len(text) and text[index - 1].isalnum() and text[index + 1].isalnum():
            return index + 1
        index = text.rfind("\n", 0, index)
    return 0


TEXT_SUFFIXES = (".txt", ".md", ".rst")


def text_files(folder: Path) -> list[Path]:
    """The text files under a folder, in a stable order."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)


def local_file(path: Path) -> DocumentStream:
    """Plain text is one running text; .jsonl/.json/.parquet are documents; a
    folder is its .txt/.md/.rst files read one after another as one running text."""
    if path.is_dir():
        files = text_files(path)
        if not files:
            raise UserError(f"{path}: folder holds no {'/'.join(TEXT_SUFFIXES)} files")
        return DocumentStream(chain.from_iterable(text_pieces(f) for f in files), continuous=True,
                              origin=f"{path} ({len(files)} files)")
    if not path.is_file():
        raise UserError(f"{path}: text file not found")
    builder = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(path.suffix.lower())
    if builder:
        return DocumentStream(hub_documents(HubDataset(builder, data_files=str(path))), continuous=False,
                              origin=str(path))
    return DocumentStream(text_pieces(path), continuous=True, origin=str(path))


def _hub_source(name: str) -> Callable[[Path, Path | None], DocumentStream]:
    def open_stream(data_dir: Path, path: Path | None) -> DocumentStream:
        dataset = HUB_DATASETS[name]  # looked up late, so tests can point it at local files
        if dataset.data_files is None:
            _check_hub_reachable(dataset.path)  # now, before anything is created on disk
        origin = dataset.path + (f" ({dataset.name})" if dataset.name else "") + f", split {dataset.split}"
        return DocumentStream(hub_documents(dataset), continuous=False, origin=origin)
    return open_stream


def _shakespeare(data_dir: Path, path: Path | None) -> DocumentStream:
    """tiny-shakespeare (1.1 MB), downloaded once to <data_dir>/shakespeare/input.txt."""
    target = data_dir / "shakespeare" / "input.txt"
    if not target.is_file():
        try:
            download_file(SHAKESPEARE_URL, target)
        except OSError as exc:
            raise SourceUnavailable(f"cannot download {SHAKESPEARE_URL} ({_one_line(exc)})") from None
    return DocumentStream(text_pieces(target), continuous=True, origin=SHAKESPEARE_URL)


def _local(data_dir: Path, path: Path | None) -> DocumentStream:
    if path is None:
        raise UserError("the local text source needs a file: pass --path FILE (GPT2_DATA_PATH in the config)")
    return local_file(path)


@dataclass(frozen=True)
class TextSource:
    """One corpus: how to open it, and how to provide it by hand when offline
    (formatted with source, data_dir, out_dir and cap_arg)."""

    open: Callable[[Path, Path | None], DocumentStream]
    by_hand: str


_COPY_PREPARED = ("or run `python scripts/prepare_data.py --source {source}{cap_arg}` (make data) on a machine "
                  "with internet and copy its data/{source}/ folder to {out_dir}/")
_USE_LOCAL = "place a text file and select GPT2_DATASET_LOCAL with GPT2_DATA_PATH=<file>, "

TEXT_SOURCES: dict[str, TextSource] = {
    "finewebedu": TextSource(_hub_source("finewebedu"), _USE_LOCAL + _COPY_PREPARED),
    "tinystories": TextSource(_hub_source("tinystories"), _USE_LOCAL + _COPY_PREPARED),
    "shakespeare": TextSource(_shakespeare, "place tiny-shakespeare's input.txt at {data_dir}/shakespeare/input.txt"),
    "local": TextSource(_local, "check the file path"),
}


def local_dir_name(path: Path) -> str:
    """A folder name per local file: its stem plus a hash of its full path."""
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
    return f"local-{path.stem}-{digest}"
