"""Reading a jobs file: CSV or JSONL, one image per row with optional per-image parameters.

Every row is read before anything is sent; all problems are collected and reported
together (file, line number and field), so a bad file is fixed in one go.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.errors import InvalidJob
from contract.job import GenerationParams
from contract.loras import parse_lora_spec, parse_lora_specs

INPUT_FIELD = "input"
# Column names accepted besides GenerationParams' own ("format" mirrors --format).
ALIASES = {"format": "output_format"}
PARAM_FIELDS = frozenset(GenerationParams.model_fields)
ALLOWED_FIELDS = frozenset({INPUT_FIELD, *PARAM_FIELDS, *ALIASES})
CSV_SUFFIXES = (".csv",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
TEXT_FIELDS = frozenset({"prompt", "negative_prompt"})  # whitespace is kept as written
LORAS_FIELD = "loras"  # CSV: "REF[:SCALE];REF..."; JSONL: that, or a list of specs/objects


@dataclass(frozen=True)
class JobRow:
    """One row: the input (S3 URI or key) and the parameters it sets."""

    line: int
    input: str
    overrides: dict[str, Any]


class JobsFileError(InvalidJob):
    """The jobs file has problems; ``problems`` lists each with its line and field."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.problems = problems
        shown = "\n  ".join(problems)
        super().__init__(f"{path}: {len(problems)} problem(s), nothing was sent:\n  {shown}")


def _row(line: int, record: dict[str, Any], problems: list[str], *,
         empty_is_unset: bool) -> JobRow | None:
    """Normalise one record; append a problem for each unknown or missing field.

    An absent field, a JSON null and (in CSV, which cannot tell them apart) an empty
    cell all mean "use the command-line default".
    """
    values: dict[str, Any] = {}
    ok = True
    for raw_name, value in record.items():
        if raw_name is None:  # csv: more cells than header columns
            problems.append(f"line {line}: more values than columns in the header")
            ok = False
            continue
        name = raw_name.strip()
        if name not in ALLOWED_FIELDS:
            problems.append(f"line {line}: {name}: unknown field "
                            f"(known: {', '.join(sorted(ALLOWED_FIELDS))})")
            ok = False
            continue
        if isinstance(value, str) and name not in TEXT_FIELDS:
            value = value.strip()
        if value is None or (empty_is_unset and value == ""):
            continue
        if name == LORAS_FIELD:
            try:
                value = _loras(value)
            except InvalidJob as exc:
                problems.append(f"line {line}: {name}: {exc}")
                ok = False
                continue
        values[ALIASES.get(name, name)] = value
    source = values.pop(INPUT_FIELD, None)
    if not isinstance(source, str) or not source.strip():
        problems.append(f"line {line}: {INPUT_FIELD}: required (an s3:// URI or a key)")
        ok = False
    return JobRow(line=line, input=source.strip(), overrides=values) if ok else None


def _loras(value: Any) -> Any:
    """A ``loras`` cell as GenerationParams takes it: spec strings become {ref, scale};
    objects pass through (GenerationParams checks them)."""
    if isinstance(value, str):
        return [lora.model_dump() for lora in parse_lora_specs(value)]
    if isinstance(value, list):
        return [parse_lora_spec(v).model_dump() if isinstance(v, str) else v for v in value]
    return value


def _read_csv(path: Path, problems: list[str]) -> list[JobRow]:
    rows: list[JobRow] = []
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames:
            problems.append("line 1: no header row (expected at least an 'input' column)")
            return rows
        start = reader.line_num + 1
        for record in reader:
            row = _row(start, record, problems, empty_is_unset=True)
            if row is not None:
                rows.append(row)
            start = reader.line_num + 1
    return rows


def _read_jsonl(path: Path, problems: list[str]) -> list[JobRow]:
    rows: list[JobRow] = []
    with path.open(encoding="utf-8-sig") as fh:
        for number, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                problems.append(f"line {number}: not valid JSON: {exc.msg}")
                continue
            if not isinstance(record, dict):
                problems.append(f"line {number}: expected a JSON object, got "
                                f"{type(record).__name__}")
                continue
            row = _row(number, record, problems, empty_is_unset=False)
            if row is not None:
                rows.append(row)
    return rows


def read_jobs_file(path: Path) -> tuple[list[JobRow], list[str]]:
    """The good rows of a CSV or JSONL jobs file and a problem line for each bad one.

    The caller adds the problems it finds later (bad parameter values, missing inputs)
    and raises JobsFileError with all of them before sending anything.
    """
    if not path.is_file():
        raise InvalidJob(f"--jobs: no such file: {path}")
    problems: list[str] = []
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        rows = _read_csv(path, problems)
    elif suffix in JSONL_SUFFIXES:
        rows = _read_jsonl(path, problems)
    else:
        raise InvalidJob(f"--jobs: {path}: unknown format {suffix!r} "
                         f"(use {', '.join(CSV_SUFFIXES + JSONL_SUFFIXES)})")
    if not rows and not problems:
        problems.append("no rows")
    return rows, problems
