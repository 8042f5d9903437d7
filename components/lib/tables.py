"""The CSV files we write for people as well as for the next step (manifest, quarantine, predictions).

A cell that begins with `=`, `+`, `-`, `@`, a tab or a carriage return is a formula to a spreadsheet
(CSV injection: a label `=cmd|' /C calc'!A0` from a user's table). As OWASP advises, such cells are
written behind a leading `'`, which spreadsheets show as text. Our readers remove it again, so the data
the next step reads is exactly what was given: a cell that itself begins with `'` is escaped too, so
every string round-trips.
"""
from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from typing import IO

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def escape(value) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def unescape(text: str) -> str:
    return text[1:] if text.startswith("'") else text


class Writer:
    """csv.DictWriter (with `fields`) or csv.writer (without), every cell escaped."""

    def __init__(self, f: IO[str], fields: list[str] | None = None):
        self.fields = fields
        self._w = csv.writer(f)
        if fields:
            self._w.writerow(fields)

    def writerow(self, row) -> None:
        cells = [row.get(k, "") for k in self.fields] if self.fields else row
        self._w.writerow([escape(c) for c in cells])

    def writerows(self, rows: Iterable) -> None:
        for row in rows:
            self.writerow(row)


def read_rows(f: IO[str]) -> Iterator[dict[str, str]]:
    """The rows of a CSV file a Writer made, exactly as they were given."""
    for row in csv.DictReader(f):
        yield {k: unescape(v) if isinstance(v, str) else v for k, v in row.items()}
