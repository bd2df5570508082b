"""Read prompt lists from the files people have: TXT, JSON, JSONL and CSV, standard benchmarks included.

The prompt column of a CSV is recognised from its header (AdvBench ``goal``,
JailbreakBench ``Goal``, HarmBench ``Behavior``, StrongREJECT
``forbidden_prompt``, XSTest ``prompt``) or given with ``column``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from logitguard.errors import LogitGuardError
from logitguard.io import parse_json, read_text, regular_file, text_lines

PROMPT_COLUMNS = ("prompt", "goal", "Goal", "Behavior", "forbidden_prompt", "instruction", "question")


def read_prompts(path: str | Path, column: str | None = None, split: str = "train") -> list[str]:
    """Non-empty prompts from ``path``, or from a ``datasets`` name (``org/name``) when no such file exists.

    Errors name the file (and line) and what was expected.
    """
    if not Path(path).exists() and looks_like_dataset(str(path)):
        return _dataset_prompts(str(path), column, split)
    path = regular_file(path, "prompt file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        prompts = _csv_prompts(path, column)
    elif suffix == ".jsonl":
        prompts = [
            _record_prompt(parse_json(line, f"{path}:{number}"), column, f"{path}:{number}")
            for number, line in text_lines(path)
            if line.strip()
        ]
    elif suffix == ".json":
        where, records = _json_prompt_list(parse_json(read_text(path), str(path)), str(path))
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
    try:
        import datasets
    except ImportError:
        raise LogitGuardError(
            f"{name!r} is not a file, so it is read as a datasets name (org/name); pip install datasets"
        ) from None

    rows = datasets.load_dataset(name, split=split)
    key = column or next((c for c in PROMPT_COLUMNS if c in rows.column_names), None)
    if key is None or key not in rows.column_names:
        expected = repr(column) if column else f"one of {list(PROMPT_COLUMNS)}"
        raise LogitGuardError(f"dataset {name} ({split}): no prompt column ({expected}) in {rows.column_names}")
    prompts = [p for p in rows[key] if isinstance(p, str) and p.strip()]
    if not prompts:
        raise LogitGuardError(f"dataset {name} ({split}): no prompts found")
    return prompts


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
    return with_input(record, key, where)


def with_input(record: dict, key: str, where: str) -> str:
    """The prompt of an instruction record: Alpaca-style ``{"instruction", "input"}`` records are the instruction,
    a blank line and the input (as they were written to be read), never the instruction alone."""
    extra = record.get("input") if key == "instruction" else None
    if extra is None or extra == "":
        return record[key]
    if not isinstance(extra, str):
        raise LogitGuardError(f"{where}: field 'input' is not a string")
    return f"{record[key]}\n\n{extra}"


CSV_FIELD_LIMIT = 1 << 26  # a CSV field up to 64 MiB is read (Python's default stops at 128 KiB)


def _csv_rows(path: Path) -> tuple[list[str], list[dict]]:
    """The header and rows of a UTF-8 CSV file; a malformed row is an error naming its line."""
    import io

    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    try:
        rows = list(reader)
    except csv.Error as e:
        raise LogitGuardError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
    return list(reader.fieldnames or []), rows


def _csv_prompts(path: Path, column: str | None) -> list[str]:
    header, rows = _csv_rows(path)
    key = column or next((c for c in PROMPT_COLUMNS if c in header), None)
    if key is None or key not in header:
        expected = repr(column) if column else f"one of {list(PROMPT_COLUMNS)}"
        raise LogitGuardError(f"{path}: no prompt column ({expected}) in header {header}")
    return [with_input(row, key, f"{path}: row {n + 1}") if row[key] else "" for n, row in enumerate(rows)]


def read_records(path: str | Path) -> list[tuple[str, dict]]:
    """(``file:line``, record) for each object of a JSONL file, a JSON list, or the rows of a CSV file."""
    path = regular_file(path, "records file")
    suffix = path.suffix.lower()
    if suffix == ".json":
        records = parse_json(read_text(path), str(path))
        if not isinstance(records, list):
            raise LogitGuardError(f"{path}: expected a JSON list of records")
        located = [(f"{path}[{i}]", r) for i, r in enumerate(records)]
    elif suffix == ".csv":
        located = [(f"{path}: row {n + 1}", row) for n, row in enumerate(_csv_rows(path)[1])]
    elif suffix in (".jsonl", ""):
        located = [(f"{path}:{n}", parse_json(line, f"{path}:{n}")) for n, line in text_lines(path) if line.strip()]
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
