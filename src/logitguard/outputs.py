"""Output ownership: a command writes only what it made itself, and one run at a time writes an output.

* :func:`claim_folder`: an output folder is new, empty, or marked (``.logitguard.json``) as the earlier output of
  the same command; a folder holding anything else (a user's adapter, another command's output) is refused, and so
  is one where a file the command wrote was edited since.
* :func:`replace_output`: a command's new output replaces its earlier one file by file: only the files its mark
  lists (what it wrote) are set aside and removed; whatever a user added to the folder stays.
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
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from logitguard.errors import LogitGuardError
from logitguard.fingerprints import file_fingerprint
from logitguard.io import (
    atomic_directory,
    ensure_writable_dir,
    glob_escape,
    recover_directory,
    set_aside_folder,
    write_json,
)

MARKER = ".logitguard.json"
LOCK_TEXT = b"logitguard run:"  # how a lock file LogitGuard wrote begins (a user's file of that name is refused)


def _marker(folder: Path) -> dict:
    path = folder / MARKER
    if not path.is_file():
        return {}
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return {}
    return found if isinstance(found, dict) else {}


def _marker_command(folder: Path) -> str | None:
    return _marker(folder).get("command")


def _written_files(folder: Path) -> dict[str, str]:
    """The files the folder's mark says its command wrote: relative path -> content fingerprint."""
    files = _marker(folder).get("files")
    if not isinstance(files, dict):
        return {}
    return {name: print_ for name, print_ in files.items() if isinstance(name, str) and _inside(folder, name)}


def _inside(folder: Path, name: str) -> bool:
    return not Path(name).is_absolute() and ".." not in Path(name).parts


SIDE_NAME_ROOM = 24  # what LogitGuard adds to an output's name for the paths beside it (".NAME.x8y2k4q1.replaced")


def check_name_fits(path: Path, what: str) -> None:
    """Refuse an output name the file system cannot hold, with the paths made beside it, before any work is done."""
    existing = next((p for p in [path.parent, *path.parent.parents] if p.is_dir()), Path("."))
    try:
        limit = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    if len(os.fsencode(path.name)) + SIDE_NAME_ROOM > limit:
        raise LogitGuardError(
            f"{what} {path}: the name is {len(os.fsencode(path.name))} bytes long; this file system holds names of "
            f"{limit} bytes, and LogitGuard needs {SIDE_NAME_ROOM} more beside it; choose a shorter name"
        )


def claim_folder(folder: str | os.PathLike, command: str, what: str = "--out") -> bool:
    """Check that ``command`` may write into ``folder``; returns whether it holds the command's earlier output.

    Nothing is written: call :func:`mark_folder` once the command's inputs are all checked.
    """
    folder = Path(folder)
    check_name_fits(folder, what)
    if folder.exists() and not folder.is_dir():
        raise LogitGuardError(f"{what} {folder} is a file; give a folder")
    if not folder.is_dir() or not any(folder.iterdir()):
        return False
    owner = _marker_command(folder)
    if owner == command:
        for name, written in _written_files(folder).items():
            path = folder / name
            if path.is_file() and file_fingerprint(path) != written:
                raise LogitGuardError(
                    f"{what} {folder}: {name} was changed since logitguard {command} wrote it, and a rerun would "
                    "replace it; move it away or choose another folder"
                )
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


def replace_output(folder: str | os.PathLike, command: str, write: Callable[[Path], None]) -> Path:
    """Write ``command``'s output into ``folder`` (claimed by :func:`claim_folder`) in place of its earlier one.

    ``write(tmp)`` writes the new files into a temporary folder beside ``folder``. Then the files the earlier mark
    lists (what ``command`` wrote before) move into a set-aside folder of their own, the mark is rewritten to list
    the new files, the new files move in, and the set-aside folder is removed. Nothing the mark does not list is
    moved or removed: a user's notes, an adapter kept inside, a folder named like a set-aside one all stay.
    """
    folder = Path(folder)
    ensure_writable_dir(folder.parent)
    recover_directory(folder)  # a replacement a kill cut short: its set-aside files held only our old outputs
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        write(tmp)
        ensure_writable_dir(folder)
        new = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        earlier = _written_files(folder)
        for name in new:
            if (folder / name).exists() and name not in earlier:
                raise LogitGuardError(
                    f"{folder / name} was not written by logitguard {command}, and this run would replace it; "
                    "move it away or choose another folder"
                )
        aside = set_aside_folder(folder)
        for name in earlier:
            if (folder / name).is_file():
                target = aside / "old" / name
                target.parent.mkdir(parents=True, exist_ok=True)
                (folder / name).rename(target)
        write_json(folder / MARKER, {"command": command, "files": {n: file_fingerprint(tmp / n) for n in new}})
        for name in new:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / name, folder / name)
        shutil.rmtree(aside, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _record_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.logitguard.json")


def claim_file(path: str | os.PathLike, command: str, what: str = "--out") -> None:
    """Check that ``command`` may write the file ``path``: it is new, or ``command``'s unchanged earlier output."""
    path = Path(path)
    check_name_fits(path, what)
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

    def __init__(self, output: str | os.PathLike, wait: bool = False) -> None:
        output = Path(output)
        self.path = output.parent / f".{output.name}.lock"
        self.output = output
        self.wait = wait
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        ensure_writable_dir(self.path.parent)
        if self.path.is_file() and self.path.stat().st_size and not self.path.read_bytes().startswith(LOCK_TEXT):
            raise LogitGuardError(
                f"{self.path} exists and is not a logitguard lock; move it away (a run locks its output there)"
            )
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = (
                os.read(fd, 200).decode(errors="replace").removeprefix(LOCK_TEXT.decode()).strip() or "another process"
            )
            os.close(fd)
            raise LogitGuardError(
                f"{self.output} is being written by another logitguard run ({holder}); wait for it to finish or "
                "choose another output"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, LOCK_TEXT + f" pid {os.getpid()} on {socket.gethostname()}".encode())
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


def built_once(folder: str | os.PathLike, done: Callable[[Path], bool], build: Callable[[Path], None]) -> Path:
    """``folder`` (a cache entry), built by ``build(tmp)`` into a temporary folder renamed into place unless
    ``done(folder)``. One builder at a time: a second waits for the first, then finds the entry done. A temporary
    folder of this entry that a killed build left behind is removed first (no other build of it can be running)."""
    folder = Path(folder)
    stale = list(folder.parent.glob(f".{glob_escape(folder.name)}.*.tmp"))
    if done(folder) and not stale:
        return folder
    with OutputLock(folder, wait=True):
        for path in folder.parent.glob(f".{glob_escape(folder.name)}.*.tmp"):  # no build of it runs: ours, stale
            shutil.rmtree(path, ignore_errors=True)
        if not done(folder):
            with atomic_directory(folder) as tmp:
                build(tmp)
    return folder
