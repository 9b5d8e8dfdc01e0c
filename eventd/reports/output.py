"""A report's answer as a person reads it in a terminal (``table``), as CSV, or as JSON.

Each report turns its JSON into sections (a title, column names, rows); a table prints
each with aligned columns under its title, CSV writes each as a header row and its
rows, sections apart by an empty line. JSON is the endpoint's answer as it is.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

Section = tuple[str, list[str], list[list[Any]]]
FORMATS = ("table", "json", "csv")


def render(result: dict[str, Any], sections: list[Section], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(result, indent=2) + "\n"
    if fmt == "csv":
        return "\n".join(_csv(header, rows) for _, header, rows in sections)
    return "\n".join(_table(title, header, rows) for title, header, rows in sections)


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}" if abs(value) < 1e15 else str(value)
    return "-" if value is None else str(value)


def _table(title: str, header: list[str], rows: list[list[Any]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]

    def line(values: list[str]) -> str:
        # the first column (a name or a date) to the left, numbers to the right
        first = values[0].ljust(widths[0])
        rest = (v.rjust(w) for v, w in zip(values[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    out = [title, line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in cells] or ["(no data)"]
    return "\n".join(out) + "\n"
