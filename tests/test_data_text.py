"""GPT-2 text data: the offline tokenizer, preparation into uint16 token
files (plain text, JSON lines and Parquet through the same `datasets` code
path as FineWeb-Edu), the offline failures, and random-window batches.
Tests never reach the internet: downloads go to 127.0.0.1, and the one test
that tries huggingface.co for real runs only where it is unreachable."""
from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tiktoken
import torch

from lib.data import text_sources
from lib.data.text import get_batch, load_tokens, prepare_text, prepared_dir
from lib.data.text_sources import HubDataset, text_pieces
from lib.data.tokenizer import BPE_RANKS, EOT_TOKEN, gpt2_encoding
from lib.errors import UserError
from lib.jsonio import read_json
from tests.loopback import refused_url, serve_folder

ROOT = Path(__file__).resolve().parent.parent
# Whitespace runs, blank lines, CRLF, tabs, contractions, digits, non-ASCII:
# the cases where a careless split changes GPT-2's tokens.
TRICKY = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
          "  indented\tline  \r\nit's 1234567 we'll they'RE naïve café 東京\n\n\n"
          "x" + " " * 40 + "y\nend of  \n text   ")


def documents(n: int) -> list[str]:
    return [f"Document {i}: the {'quick ' * (i % 3)}brown fox number {i}." for i in range(n)]


def tokens_of(folder: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    data = load_tokens(folder)
    return np.asarray(data.train), np.asarray(data.val), data.meta


def expected_by_document(docs: list[str], every: int = 10) -> tuple[list[int], list[int]]:
    encoding = gpt2_encoding()
    train, val = [], []
    for i, doc in enumerate(docs):
        (val if i % every == every - 1 else train).extend(encoding.encode_ordinary(doc) + [EOT_TOKEN])
    return train, val


# --- tokenizer -------------------------------------------------------------

def test_offline_encoding_matches_tiktoken_gpt2(tmp_path, monkeypatch):
    encoding = gpt2_encoding()
    assert encoding.encode("Hello world") == [15496, 995]
    assert encoding.encode("<|endoftext|>", allowed_special="all") == [EOT_TOKEN]
    assert encoding.n_vocab == 50257 and encoding.eot_token == EOT_TOKEN
    # tiktoken's own r50k_base (the same ranks as "gpt2"), loaded offline from
    # a cache holding our asset under the name tiktoken would download it to.
    url = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
    shutil.copy(BPE_RANKS, tmp_path / hashlib.sha1(url.encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    reference = tiktoken.get_encoding("r50k_base")
    sample = TRICKY + (ROOT / "README.md").read_text()
    assert encoding.encode_ordinary(sample) == reference.encode_ordinary(sample)
    assert encoding.decode(encoding.encode_ordinary(sample)) == sample


def test_asset_has_its_licence():
    notice = (BPE_RANKS.parent / "gpt2.tiktoken.LICENSE").read_text()
    assert "MIT License" in notice and "Copyright (c) 2022 OpenAI" in notice and "openai/whisper" in notice


@pytest.mark.parametrize("chunk_chars", [3, 17, 64])
def test_text_pieces_tokenize_like_the_whole_text(tmp_path, chunk_chars):
    path = tmp_path / "t.txt"
    path.write_bytes((TRICKY * 3).encode())
    pieces = list(text_pieces(path, chunk_chars))
    assert len(pieces) > 3 and "".join(pieces) == TRICKY * 3
    encoding = gpt2_encoding()
    assert sum(encoding.encode_batch(pieces, disallowed_special=()), []) == encoding.encode_ordinary(TRICKY * 3)


# --- preparation -------------------------------------------------------------

def test_plain_text_file_splits_by_position(tmp_path, capsys):
    path = tmp_path / "input.txt"
    path.write_text(TRICKY * 20)
    folder = prepare_text("local", tmp_path / "data", path=path, progress_interval_s=0)
    assert folder == prepared_dir("local", tmp_path / "data", path) and folder.name.startswith("local-input-")
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "train.bin", "val.bin"]
    train, val, meta = tokens_of(folder)
    ids = gpt2_encoding().encode_ordinary(TRICKY * 20)
    assert train.dtype == np.uint16 and len(train) + len(val) == len(ids)
    assert len(val) == len(ids) // 10
    assert train.tolist() + val.tolist() == ids  # no separators in one running text
    assert (meta["train_tokens"], meta["val_tokens"]) == (len(train), len(val))
    assert meta["tokenizer"] == "gpt2" and meta["vocab_size"] == 50257 and meta["dtype"] == "uint16"
    assert meta["source"] == "local" and meta["origin"] == str(path) and meta["token_cap"] is None
    assert "created" in meta and "last 10%" in meta["split"]
    assert "tokenizing local:" in capsys.readouterr().out
    prepare_text("local", tmp_path / "data", path=path)  # same file, same cap: reused
    assert "using" in capsys.readouterr().out
    path.write_text(TRICKY)  # the file changed: prepared again
    prepare_text("local", tmp_path / "data", path=path)
    assert "tokenizing" in capsys.readouterr().out


def test_token_cap_and_progress(tmp_path, capsys):
    path = tmp_path / "input.txt"
    path.write_text(TRICKY * 50)
    train, val, meta = tokens_of(prepare_text("local", tmp_path, 500, path, progress_interval_s=0))
    assert len(train) + len(val) == 500 == meta["token_cap"] and len(val) == 50
    assert train.tolist() + val.tolist() == gpt2_encoding().encode_ordinary(TRICKY * 50)[:500]
    assert "/ 500 tokens (100.0%)" in capsys.readouterr().out


@pytest.fixture
def jsonl(tmp_path) -> tuple[Path, list[str]]:
    docs = documents(35)
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(docs)))
    return path, docs


def test_finewebedu_code_path_on_local_json(tmp_path, jsonl, monkeypatch):
    """The registry's finewebedu and tinystories entries, pointed at a local
    JSON-lines file: load_dataset(..., streaming=True), 90/10 by document."""
    path, docs = jsonl
    for name in ("finewebedu", "tinystories"):
        monkeypatch.setitem(text_sources.HUB_DATASETS, name, HubDataset("json", data_files=str(path)))
    train, val, meta = tokens_of(prepare_text("finewebedu", tmp_path / "data"))
    assert (train.tolist(), val.tolist()) == expected_by_document(docs)
    assert meta["documents"] == 35 and "every 10th document" in meta["split"] and meta["origin"].startswith("json")
    assert prepared_dir("finewebedu", tmp_path / "data") == tmp_path / "data" / "finewebedu"
    capped = prepare_text("tinystories", tmp_path / "data", token_cap=100)
    train, val, meta = tokens_of(capped)
    assert len(train) + len(val) == 100 and meta["documents"] < 35
    assert train.tolist() == expected_by_document(docs)[0][:len(train)]


def test_local_parquet_and_jsonl_are_documents(tmp_path, jsonl):
    path, docs = jsonl
    parquet = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": docs, "n": list(range(len(docs)))}), parquet)
    for source_file in (parquet, path):
        train, val, meta = tokens_of(prepare_text("local", tmp_path / "data", path=source_file))
        assert (train.tolist(), val.tolist()) == expected_by_document(docs)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "no text column"}\n')
    with pytest.raises(UserError, match="row 0 has no text column 'text' \\(columns: body\\)"):
        prepare_text("local", tmp_path / "data", path=bad)
    bad.write_text('{"text": "fine"}\n{"text": broken\n')
    with pytest.raises(UserError, match="bad.jsonl: cannot read as json data \\(JSON parse error"):
        prepare_text("local", tmp_path / "data", path=bad)


def test_interrupted_preparation_keeps_the_previous_one(tmp_path, jsonl, monkeypatch):
    path, docs = jsonl
    monkeypatch.setitem(text_sources.HUB_DATASETS, "finewebedu", HubDataset("json", data_files=str(path)))
    folder = prepare_text("finewebedu", tmp_path, token_cap=200)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def interrupted(data_dir, file):
        def stream():
            yield from docs[:20]
            raise KeyboardInterrupt
        return text_sources.DocumentStream(stream(), continuous=False, origin="test")
    monkeypatch.setitem(text_sources.TEXT_SOURCES, "finewebedu",
                        text_sources.TextSource(interrupted, text_sources.TEXT_SOURCES["finewebedu"].by_hand))
    with pytest.raises(KeyboardInterrupt):
        prepare_text("finewebedu", tmp_path, token_cap=300)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no temp files, old files intact
    (folder / "val.bin").write_bytes(b"\0\0")  # a half-copied file no longer matches meta.json
    with pytest.raises(UserError, match="no complete token files"):
        load_tokens(folder)


def test_too_little_text_and_bad_arguments(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("Hi")
    with pytest.raises(UserError, match="too little text"):
        prepare_text("local", tmp_path, path=path)
    assert not list(prepared_dir("local", tmp_path, path).iterdir())
    with pytest.raises(UserError, match="unknown text source 'owt'; choose one of: finewebedu"):
        prepare_text("owt", tmp_path)
    with pytest.raises(UserError, match="needs a file"):
        prepare_text("local", tmp_path)
    with pytest.raises(UserError, match="token cap"):
        prepare_text("shakespeare", tmp_path, token_cap=0)
    with pytest.raises(UserError, match="missing.txt: text file or folder not found"):
        prepare_text("local", tmp_path, path=tmp_path / "missing.txt")


# --- offline and downloads -------------------------------------------------------

def hub_reachable() -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=2).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(hub_reachable(), reason="huggingface.co is reachable here; this tests the offline path")
def test_finewebedu_offline_for_real_fails_fast_in_one_line(tmp_path):
    started = time.monotonic()
    with pytest.raises(UserError) as excinfo:
        prepare_text("finewebedu", tmp_path, token_cap=1000)
    assert time.monotonic() - started < 15
    message = str(excinfo.value)
    assert "\n" not in message
    assert message.startswith("cannot reach huggingface.co to stream HuggingFaceFW/fineweb-edu (")
    assert "GPT2_DATASET_LOCAL" in message and "--source finewebedu --token-cap 1000" in message
    assert f"{tmp_path / 'finewebedu'}/" in message
    assert not any(tmp_path.iterdir())


def test_unreachable_or_offline_hub(tmp_path, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "ENDPOINT", refused_url("").rstrip("/"))
    with pytest.raises(UserError, match=r"^cannot reach 127\.0\.0\.1 to stream roneneldan/TinyStories \("):
        prepare_text("tinystories", tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set; place a text file"):
        prepare_text("finewebedu", tmp_path)


def test_cli_offline_exits_2_with_one_line(tmp_path):
    env_endpoint = refused_url("").rstrip("/")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "prepare_data.py"), "--source", "finewebedu",
                             "--data-dir", str(tmp_path), "--token-cap", "1000"],
                            capture_output=True, text=True, cwd=ROOT, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "HF_ENDPOINT": env_endpoint, "HOME": str(tmp_path)})
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: cannot reach 127.0.0.1")


def test_shakespeare_downloads_once_then_offline_error(tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    (served / "input.txt").write_text(TRICKY * 10)
    with serve_folder(served) as base:
        monkeypatch.setattr(text_sources, "SHAKESPEARE_URL", base + "input.txt")
        train, val, meta = tokens_of(prepare_text("shakespeare", tmp_path / "data"))
    assert (tmp_path / "data" / "shakespeare" / "input.txt").read_bytes() == (TRICKY * 10).encode()
    assert train.tolist() + val.tolist() == gpt2_encoding().encode_ordinary(TRICKY * 10)
    assert meta["origin"] == base + "input.txt"
    monkeypatch.setattr(text_sources, "SHAKESPEARE_URL", refused_url("input.txt"))
    with pytest.raises(UserError, match=r"cannot download .*; place tiny-shakespeare's input.txt at .*shakespeare/input.txt"):
        prepare_text("shakespeare", tmp_path / "offline")


# --- batches ---------------------------------------------------------------------

@pytest.fixture
def token_file(tmp_path) -> np.ndarray:
    """A real uint16 memmap holding 0, 1, 2, ... so windows are easy to check."""
    path = tmp_path / "train.bin"
    np.arange(1000, dtype=np.uint16).tofile(path)
    return np.memmap(path, dtype=np.uint16, mode="r")


def test_get_batch_windows(token_file):
    x, y = get_batch(token_file, 16, 8, torch.Generator().manual_seed(0), "cpu")
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
    assert x.is_contiguous() and y.is_contiguous()
    assert torch.equal(y, x + 1)  # targets are the next tokens
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(8, 15, dtype=torch.int64))  # contiguous windows
    assert int(x.min()) >= 0 and int(y.max()) <= 999
    again, _ = get_batch(token_file, 16, 8, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.equal(x, again)
    with pytest.raises(UserError, match="1000 tokens holds no window of block_size \\+ 1 = 1001"):
        get_batch(token_file, 1000, 2, None, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_get_batch_on_cuda(token_file):
    x, y = get_batch(token_file, 16, 4, torch.Generator().manual_seed(0), "cuda")
    assert x.is_cuda and y.is_cuda and x.dtype == torch.int64
    assert torch.equal(y.cpu(), x.cpu() + 1)


def test_a_folder_is_its_text_files_in_order(tmp_path):
    folder = tmp_path / "notes"
    (folder / "b").mkdir(parents=True)
    (folder / "a.md").write_text("First file. " * 400)
    (folder / "b" / "c.txt").write_text("Second file. " * 400)
    (folder / "skip.bin").write_bytes(b"\x00\x01")
    out = prepare_text("local", tmp_path / "data", path=folder)
    tokens = load_tokens(out)
    meta = tokens.meta
    assert meta["origin_files"] == 2
    encoding = gpt2_encoding()
    # Files are tokenized one after another (a token never spans two files).
    expected = encoding.encode_ordinary("First file. " * 400) + encoding.encode_ordinary("Second file. " * 400)
    assert list(tokens.train) + list(tokens.val) == expected
    assert prepare_text("local", tmp_path / "data", path=folder) == out  # reused while unchanged
    (folder / "a.md").write_text("Changed. " * 400)
    assert read_json(out / "meta.json")["origin_bytes"] == meta["origin_bytes"]
    prepare_text("local", tmp_path / "data", path=folder)
    assert read_json(out / "meta.json")["origin_bytes"] != meta["origin_bytes"]
