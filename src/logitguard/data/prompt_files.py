"""Read prompt lists from the files people have: TXT, JSON, JSONL and CSV, standard benchmarks included.

The prompt column of a CSV is recognised from its header (AdvBench ``goal``,
JailbreakBench ``Goal``, HarmBench ``Behavior``, StrongREJECT
``forbidden_prompt``, XSTest ``prompt``) or given with ``column``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from logitguard.errors import LogitGuardError
from logitguard.io import read_text, text_lines

PROMPT_COLUMNS = ("prompt", "goal", "Goal", "Behavior", "forbidden_prompt", "instruction", "question")


def read_prompts(path: str | Path, column: str | None = None, split: str = "train") -> list[str]:
    """Non-empty prompts from ``path``, or from a ``datasets`` name (``org/name``) when no such file exists.

    Errors name the file (and line) and what was expected.
    """
    if not Path(path).exists() and looks_like_dataset(str(path)):
        return _dataset_prompts(str(path), column, split)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such prompt file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        prompts = _csv_prompts(path, column)
    elif suffix == ".jsonl":
        prompts = [
            _record_prompt(_json(line, f"{path}:{number}"), column, f"{path}:{number}")
            for number, line in text_lines(path)
            if line.strip()
        ]
    elif suffix == ".json":
        where, records = _json_prompt_list(_json(read_text(path), str(path)), str(path))
        prompts = [_record_prompt(r, column, f"{where}[{i}]") for i, r in enumerate(records)]
    elif suffix == ".txt":
        prompts = [line.strip() for line in read_text(path).splitlines()]
    else:
        raise LogitGuardError(f"{path}: unknown prompt file type {suffix!r}; use .txt, .json, .jsonl or .csv")
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise LogitGuardError(f"{path}: no prompts found")
    return prompts


def looks_like_dataset(name: str) -> bool:
    """Whether ``name`` (no such file) reads as a ``datasets`` name ``org/name`` rather than a mistyped path.

    A name with a file suffix, a leading ``.`` or ``/``, or whose first part is an existing local folder
    (``data/trian``) is a path.
    """
    path = Path(name)
    return (
        name.count("/") == 1 and not path.suffix and not name.startswith((".", "/", "~")) and not path.parent.exists()
    )


def _dataset_prompts(name: str, column: str | None, split: str) -> list[str]:
    import datasets

    rows = datasets.load_dataset(name, split=split)
    key = column or next((c for c in PROMPT_COLUMNS if c in rows.column_names), None)
    if key is None or key not in rows.column_names:
        expected = repr(column) if column else f"one of {list(PROMPT_COLUMNS)}"
        raise LogitGuardError(f"dataset {name} ({split}): no prompt column ({expected}) in {rows.column_names}")
    prompts = [p for p in rows[key] if isinstance(p, str) and p.strip()]
    if not prompts:
        raise LogitGuardError(f"dataset {name} ({split}): no prompts found")
    return prompts


def _json(text: str, where: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise LogitGuardError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None


def _json_prompt_list(value: object, where: str) -> tuple[str, list]:
    """The list of prompts or records in a JSON file, and where it sits: the file's top-level list, or the one
    list-valued field of a top-level object (Safety-Tuned LLaMAs' evaluation sets are ``{"instructions": [...]}``)."""
    if isinstance(value, list):
        return where, value
    if isinstance(value, dict):
        lists = [key for key, item in value.items() if isinstance(item, list)]
        if len(lists) == 1:
            return f"{where}: {lists[0]}", value[lists[0]]
        found = f"list fields {sorted(lists)}" if lists else f"no list field among {sorted(value)}"
        raise LogitGuardError(
            f"{where}: expected a JSON list of prompts or records, or an object with one list field; found {found}"
        )
    raise LogitGuardError(f"{where}: expected a JSON list of prompts or records")


def _record_prompt(record: object, column: str | None, where: str) -> str:
    if isinstance(record, str):
        return record
    if not isinstance(record, dict):
        raise LogitGuardError(f"{where}: expected a string or an object with a prompt field")
    key = column or next((c for c in PROMPT_COLUMNS if c in record), None)
    if key is None or key not in record:
        expected = repr(column) if column else f"one of {list(PROMPT_COLUMNS)}"
        raise LogitGuardError(f"{where}: no prompt field ({expected}); found {sorted(record)}")
    if not isinstance(record[key], str):
        raise LogitGuardError(f"{where}: field {key!r} is not a string")
    return record[key]


def _csv_rows(path: Path) -> tuple[list[str], list[dict]]:
    """The header and rows of a UTF-8 CSV file."""
    import io

    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def _csv_prompts(path: Path, column: str | None) -> list[str]:
    header, rows = _csv_rows(path)
    key = column or next((c for c in PROMPT_COLUMNS if c in header), None)
    if key is None or key not in header:
        expected = repr(column) if column else f"one of {list(PROMPT_COLUMNS)}"
        raise LogitGuardError(f"{path}: no prompt column ({expected}) in header {header}")
    return [row[key] or "" for row in rows]


def read_records(path: str | Path) -> list[tuple[str, dict]]:
    """(``file:line``, record) for each object of a JSONL file, a JSON list, or the rows of a CSV file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".json":
        records = _json(read_text(path), str(path))
        if not isinstance(records, list):
            raise LogitGuardError(f"{path}: expected a JSON list of records")
        located = [(f"{path}[{i}]", r) for i, r in enumerate(records)]
    elif suffix == ".csv":
        located = [(f"{path}: row {n + 1}", row) for n, row in enumerate(_csv_rows(path)[1])]
    elif suffix in (".jsonl", ""):
        located = [(f"{path}:{n}", _json(line, f"{path}:{n}")) for n, line in text_lines(path) if line.strip()]
    else:
        raise LogitGuardError(f"{path}: unknown records file type {suffix!r}; use .jsonl, .json or .csv")
    for where, record in located:
        if not isinstance(record, dict):
            raise LogitGuardError(f"{where}: expected a JSON object")
    if not located:
        raise LogitGuardError(f"{path}: no records")
    return located


def read_task(path: str | Path) -> list[tuple[str, str]]:
    """(prompt, answer) pairs from JSONL/JSON records with ``prompt`` and ``answer`` fields."""
    pairs = []
    for where, record in read_records(path):
        missing = [key for key in ("prompt", "answer") if not isinstance(record.get(key), str)]
        if missing:
            raise LogitGuardError(
                f"{where}: a task record needs string fields 'prompt' and 'answer'; missing {missing}"
            )
        pairs.append((record["prompt"], record["answer"]))
    return pairs
