"""Files in and out: atomic writes (an interrupted run never leaves a half-written artifact) and reads whose every
failure is one line naming the file."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from logitguard.errors import LogitGuardError


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and rename the result to ``path`` only once it is complete.

    A write that fails (a full disk, a file too large) is one error naming ``path``, whatever the writer raised
    (``OSError``, or the ``RuntimeError`` of safetensors' and torch's writers), and leaves ``path`` as it was.
    """
    path = Path(path)
    ensure_writable_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OSError(e.errno, f"cannot write ({e.strerror}); nothing was replaced", str(path)) from None
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        Path(tmp).unlink(missing_ok=True)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else " ".join(str(e).split())
        raise OSError(getattr(e, "errno", None), f"cannot write ({reason}); nothing was replaced", str(path)) from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


SET_ASIDE_MARK = ".logitguard-set-aside.json"  # inside a folder this module set aside: what it held, and for what


def set_aside_folder(path: Path) -> Path:
    """A new folder beside ``path`` (a fresh unique name: it can never be a user's) marked as LogitGuard's set-aside
    place for ``path``: only folders carrying this mark are ever recovered or removed."""
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".replaced", dir=path.parent))
    (aside / SET_ASIDE_MARK).write_text(json.dumps({"for": path.name}), encoding="utf-8")
    return aside


def set_aside_folders(path: Path) -> list[Path]:
    """The set-aside folders this module made for ``path`` (and a kill left behind), oldest first."""
    found = []
    for aside in path.parent.glob(f".{glob_escape(path.name)}.*.replaced"):
        mark = aside / SET_ASIDE_MARK
        try:
            if aside.is_dir() and json.loads(mark.read_text(encoding="utf-8")).get("for") == path.name:
                found.append(aside)
        except (OSError, ValueError, AttributeError):
            continue  # not ours: never touched
    return sorted(found, key=lambda a: a.stat().st_mtime)


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def recover_directory(path: str | os.PathLike) -> Path:
    """Finish an :func:`atomic_directory` replacement that a kill interrupted; returns ``path``.

    A kill between setting the old folder aside and renaming the new one in leaves only the old one, set aside: it is
    put back. A kill after the new one is in leaves the old one aside: it is removed. Only folders this module set
    aside (:func:`set_aside_folder`) are touched; a user's folder of any name stays as it is.
    """
    path = Path(path)
    for aside in set_aside_folders(path):
        old = aside / "old"
        if not path.exists() and old.is_dir():
            old.rename(path)
        shutil.rmtree(aside)
    return path


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` only if the block completes.

    The old folder is moved into a set-aside folder of its own, the new one renamed in, then the set-aside folder
    removed: at every instant one complete folder exists (under ``path``, or set aside, where
    :func:`recover_directory` finds it again).
    """
    path = recover_directory(path)
    ensure_writable_dir(path.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700; give the folder the usual permissions
    try:
        yield tmp
        aside = set_aside_folder(path) if path.exists() else None
        if aside is not None:
            path.rename(aside / "old")
        tmp.rename(path)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed; raise a clear error if it cannot be written to."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PermissionError(f"cannot create output directory {path}: {err.strerror}") from err
    if not path.is_dir():
        raise NotADirectoryError(f"output path {path} exists and is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"output directory {path} is not writable")
    return path


MAX_INPUT_BYTES = 4 << 30  # a text input larger than this is refused before it is read (4 GiB)


def regular_file(path: str | os.PathLike, what: str = "file") -> Path:
    """``path`` if it is a regular file; a missing path, a folder, a device or a pipe is a one-line error."""
    return _regular_file(Path(path), what)


def _regular_file(path: Path, what: str = "file") -> Path:
    """``path``, if it is a regular file of a readable size; a folder, device or pipe (``/dev/zero``) is refused
    before a byte is read."""
    if not path.exists():
        raise FileNotFoundError(2, f"no such {what}", str(path))
    if not path.is_file():
        raise LogitGuardError(f"{path}: not a regular file (a folder, device or pipe); give the path of a {what}")
    if path.stat().st_size > MAX_INPUT_BYTES:
        raise LogitGuardError(f"{path}: {path.stat().st_size:,} bytes, more than the {MAX_INPUT_BYTES:,} read at most")
    return path


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 text file's contents, a byte-order mark dropped (every text input is read this way); a file in
    another encoding, or that is not a regular file, is an error naming it."""
    path = _regular_file(Path(path))
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise LogitGuardError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def text_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a UTF-8 text file, streamed, a byte-order mark dropped; a line in another
    encoding is an error naming it."""
    path = _regular_file(Path(path))
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise LogitGuardError(f"{path}:{number}: not UTF-8 text ({e.reason})") from None


def parse_json(text: str, where: str, what: str = "JSON") -> Any:
    """The JSON value of ``text`` read at ``where`` (``file`` or ``file:line``): malformed JSON, ``NaN``/``Infinity``
    and values nested too deeply to read are each a one-line error naming ``where``."""
    try:
        return json.loads(text, parse_constant=_non_finite)
    except json.JSONDecodeError as e:
        raise LogitGuardError(f"{where}: malformed JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except RecursionError:
        raise LogitGuardError(f"{where}: JSON nested too deeply to read; {what} is a flat record") from None
    except _NonFinite as e:
        raise LogitGuardError(f"{where}: {e}; {what} holds finite numbers only") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise LogitGuardError(f"{where}: unreadable JSON ({' '.join(str(e).split())})") from None


class _NonFinite(ValueError):
    """``NaN``, ``Infinity`` or ``-Infinity`` in JSON text."""


def _non_finite(token: str) -> float:
    raise _NonFinite(f"{token} is not a finite number")


def read_json(path: str | os.PathLike, kind: type | tuple[type, ...] = object, what: str = "JSON") -> Any:
    """``path``'s JSON value, which must be a ``kind``; unreadable text, malformed JSON, ``NaN``/``Infinity``, too
    deep a nesting and another shape are each a one-line error naming the file (``what`` says what it should hold)."""
    path = Path(path)
    value = parse_json(read_text(path), str(path), what)
    if not isinstance(value, kind):
        json_names = {dict: "object", list: "array", str: "string", float: "number", int: "integer", bool: "boolean"}
        names = " or ".join(json_names.get(k, k.__name__) for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise LogitGuardError(f"{path}: {what} must be a JSON {names}, got {type(value).__name__}")
    return value
