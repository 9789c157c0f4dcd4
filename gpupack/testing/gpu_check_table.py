"""The GPU check's one table (and its JSON rows): each check, its result, gpupack's figure and the truth."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Check:
    name: str
    status: str  # pass, fail, skip
    measured: str = ""
    truth: str = ""
    detail: str = ""


def format_table(checks: list[Check]) -> str:
    rows = [("check", "result", "gpupack", "truth", "detail")] + [
        (c.name, c.status.upper(), c.measured, c.truth, c.detail) for c in checks]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(widths[i]) if i < 4 else cell for i, cell in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  ------")
    return "\n".join(lines)
