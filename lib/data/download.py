"""Fetching one file over HTTP(S) into the data folder, safely.

Owns streaming a URL to a temp file beside the target, checking its MD5 when
one is known, and renaming it into place only when complete, so an
interrupted or corrupt download never looks like a finished file
(download_file; fetch_beside and install apart let MNIST rename its four
files together, only once all arrived). Failures
raise OSError with a short reason (network, HTTP status, checksum); callers
turn them into a UserError that names the URL and says which file to place
where, since only they know that.
"""
from __future__ import annotations

import hashlib
import os
import secrets
import urllib.request
from http.client import HTTPException
from pathlib import Path

from lib.data.progress import PreparationProgress
from lib.errors import escaped

DOWNLOAD_TIMEOUT_S = 20.0
CHUNK_BYTES = 1 << 20


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def temp_beside(target: Path) -> Path:
    """A new empty file in target's folder, named to be ignored (leading dot)
    until it is renamed over `target`. Unlike mkstemp (0600) it gets the
    umask's permissions, so a shared DATA_DIR stays readable by others."""
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
        try:
            tmp.open("xb").close()
            return tmp
        except FileExistsError:
            continue


def download_file(url: str, target: Path, *, md5: str | None = None,
                  timeout_s: float = DOWNLOAD_TIMEOUT_S, progress_interval_s: float = 5.0) -> Path:
    """Stream `url` to `target` (temp file, MD5 check, rename); returns target."""
    tmp = fetch_beside(url, target, md5=md5, timeout_s=timeout_s, progress_interval_s=progress_interval_s)
    try:
        return install(tmp, target, url)
    finally:
        tmp.unlink(missing_ok=True)


def fetch_beside(url: str, target: Path, *, md5: str | None = None,
                 timeout_s: float = DOWNLOAD_TIMEOUT_S, progress_interval_s: float = 5.0) -> Path:
    """Stream `url` into a new temp file beside `target` and check its MD5; returns
    the temp file, which the caller installs or deletes. For callers that rename
    several files only once all arrived (MNIST); on failure nothing is left."""
    tmp = temp_beside(target)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        try:
            with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                progress = PreparationProgress(f"downloading {url}", total, "MiB", progress_interval_s, scale=2**20)
                done = 0
                for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    progress.update(done)
        except (OSError, HTTPException) as exc:  # callers name the URL; keep the reason short
            raise OSError(str(getattr(exc, "reason", None) or exc) or type(exc).__name__) from None
        if md5 is not None and digest.hexdigest() != md5:
            raise OSError(f"MD5 {digest.hexdigest()} does not match the expected {md5}")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def install(tmp: Path, target: Path, url: str) -> Path:
    """Rename a fetched temp file over `target` and say so."""
    os.replace(tmp, target)
    print(escaped(f"downloaded {url} -> {target}"), flush=True)  # DATA_DIR may be a stranger's (matrix.json)
    return target
