"""Output ownership: a command writes only what it made itself, and one run at a time writes an output.

* :func:`claim_folder`: an output folder is new, empty, or marked (``.logitguard.json``) as the earlier output of
  the same command; a folder holding anything else (a user's adapter, another command's output) is refused.
* :func:`claim_file`: an output file is new, or the unchanged earlier output of the same command, recognised by
  the record written beside it (``.NAME.logitguard.json``: the command and the file's content fingerprint); a
  user's file, or our file edited since, is refused. :func:`record_file` writes that record.
* :class:`OutputLock`: an exclusive lock on an output for a whole run (``fcntl.flock`` on a file beside it, so the
  kernel drops it when the holder dies: a lock is never stale). A second run into the same output stops at once
  with one line naming the holder.

Every refusal is a one-line :class:`~logitguard.errors.LogitGuardError` raised before anything is written.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path
from types import TracebackType

from logitguard.errors import LogitGuardError
from logitguard.fingerprints import file_fingerprint
from logitguard.io import ensure_writable_dir, write_json

MARKER = ".logitguard.json"


def _marker_command(folder: Path) -> str | None:
    path = folder / MARKER
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("command")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None


def claim_folder(folder: str | os.PathLike, command: str, what: str = "--out") -> bool:
    """Check that ``command`` may write into ``folder``; returns whether it holds the command's earlier output.

    Nothing is written: call :func:`mark_folder` once the command's inputs are all checked.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise LogitGuardError(f"{what} {folder} is a file; give a folder")
    if not folder.is_dir() or not any(folder.iterdir()):
        return False
    owner = _marker_command(folder)
    if owner == command:
        return True
    if owner is not None:
        raise LogitGuardError(
            f"{what} {folder} holds the output of logitguard {owner}, not {command}; choose a new or empty folder"
        )
    found = sorted(p.name for p in folder.iterdir())
    raise LogitGuardError(
        f"{what} {folder} holds files that logitguard {command} did not write ({', '.join(found[:3])}"
        f"{', ...' if len(found) > 3 else ''}); choose a new or empty folder so nothing in it is overwritten"
    )


def mark_folder(folder: str | os.PathLike, command: str) -> Path:
    """Mark ``folder`` as ``command``'s output (creating it); returns it."""
    folder = ensure_writable_dir(folder)
    if _marker_command(folder) != command:
        write_json(folder / MARKER, {"command": command})
    return folder


def _record_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.logitguard.json")


def claim_file(path: str | os.PathLike, command: str, what: str = "--out") -> None:
    """Check that ``command`` may write the file ``path``: it is new, or ``command``'s unchanged earlier output."""
    path = Path(path)
    if path.is_dir():
        raise LogitGuardError(f"{what} {path} is a folder; give a file path")
    if not path.exists():
        return
    record = _record_path(path)
    try:
        written = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        written = None
    if not isinstance(written, dict) or written.get("command") != command:
        raise LogitGuardError(
            f"{what} {path} exists and logitguard {command} did not write it; choose a new path so it is not replaced"
        )
    if written.get("fingerprint") != file_fingerprint(path):
        raise LogitGuardError(
            f"{what} {path} was changed since logitguard {command} wrote it; choose a new path so it is not replaced"
        )


def record_file(path: str | os.PathLike, command: str) -> None:
    """Record that ``command`` wrote ``path`` as it is now (so a rerun may replace it, and only it)."""
    path = Path(path)
    write_json(_record_path(path), {"command": command, "fingerprint": file_fingerprint(path)})


class OutputLock:
    """An exclusive lock on ``output`` (a folder or file) for the life of a run; use as a context manager.

    The lock is a ``flock`` on ``.NAME.lock`` beside the output, so it is released on every exit path, a kill
    included. ``acquire`` fails at once with one line naming the run that holds it.
    """

    def __init__(self, output: str | os.PathLike) -> None:
        output = Path(output)
        self.path = output.parent / f".{output.name}.lock"
        self.output = output
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        ensure_writable_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise LogitGuardError(
                f"{self.output} is being written by another logitguard run ({holder}); wait for it to finish or "
                "choose another output"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, kind: type | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.release()
