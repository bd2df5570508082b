"""Content fingerprints: the one way LogitGuard tells whether an input is still the one an artifact was made from.

Every fingerprint is the first hex digits of a SHA-256 over the input's bytes: a file's, a folder's files', a
JSON-serialisable value's (keys sorted), or the chunks a caller names (a model's architecture and some of its
weights). Paths alone are never fingerprints: data rewritten in place, or another model at the same path, differs.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

LENGTH = 16  # hex digits kept: 64 bits, far beyond any collision a user's few artifacts could meet


def fingerprint(chunks: Iterable[bytes | str], length: int = LENGTH) -> str:
    """The fingerprint of a sequence of chunks (strings are UTF-8 encoded), hashed in order."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk.encode() if isinstance(chunk, str) else chunk)
    return digest.hexdigest()[:length]


def content_fingerprint(content: object, length: int = LENGTH) -> str:
    """The fingerprint of JSON-serialisable content (keys sorted): reordered or edited data differs."""
    return fingerprint([json.dumps(content, ensure_ascii=False, sort_keys=True)], length)


def _file_chunks(path: Path) -> Iterable[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            yield chunk


def file_fingerprint(path: str | os.PathLike, length: int = LENGTH) -> str:
    """The fingerprint of a file's bytes, read in chunks."""
    return fingerprint(_file_chunks(Path(path)), length)


def folder_fingerprint(folder: str | os.PathLike, length: int = LENGTH) -> str:
    """The fingerprint of every file under ``folder``: relative paths and contents, in sorted order."""
    folder = Path(folder)

    def chunks() -> Iterable[bytes | str]:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            yield path.relative_to(folder).as_posix()
            yield from _file_chunks(path)

    return fingerprint(chunks(), length)
