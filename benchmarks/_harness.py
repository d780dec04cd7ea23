"""What every benchmark script shares: arguments, the machine load, JSON + markdown results.

    from _harness import Run, parser, table
    ap = parser(__doc__)                      # --out (benchmarks/results) and --tag
    args = ap.parse_args()
    run = Run("quant_speed", args)            # records the command and the load, under "load"
    ...
    run.write(result, markdown_lines)         # <name><tag>.json and .md, load at the end added
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

RESULTS = Path(__file__).parent / "results"


def parser(doc: str | None, out: bool = True, tag: bool = True) -> argparse.ArgumentParser:
    """An ArgumentParser described by the script's docstring, with ``--out`` and ``--tag``."""
    ap = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0] if doc else None)
    if out:
        ap.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON and markdown")
    if tag:
        ap.add_argument("--tag", default="", help="suffix of the result file names, e.g. _2threads")
    return ap


def load() -> list[float]:
    """The 1/5/15-minute load average (benchmarks on the shared machine record it)."""
    return [round(v, 2) for v in os.getloadavg()]


class Run:
    """One benchmark run: its command and the load at its start and end, under one key."""

    def __init__(self, name: str, args: argparse.Namespace | None = None):
        self.name = name
        self.out = Path(getattr(args, "out", RESULTS))
        self.tag = getattr(args, "tag", "") or ""
        self.command = " ".join(["python", *sys.argv])
        self.load = {"start": load(), "end": None}

    def describe_load(self) -> str:
        end = self.load["end"] or load()
        return f"load average {self.load['start'][0]:.1f} → {end[0]:.1f} (2 shared cores)"

    def write(self, result: dict[str, Any], markdown: str | Iterable[str]) -> tuple[Path, Path]:
        """``result`` (plus command and load) as ``<name><tag>.json`` and the markdown beside it."""
        self.load["end"] = load()
        result = {**result, "command": self.command, "load": self.load}
        self.out.mkdir(parents=True, exist_ok=True)
        js = self.out / f"{self.name}{self.tag}.json"
        md = self.out / f"{self.name}{self.tag}.md"
        js.write_text(json.dumps(result, indent=1, default=str) + "\n")
        text = markdown if isinstance(markdown, str) else "\n".join(markdown)
        md.write_text(text.rstrip("\n") + "\n")
        return js, md


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines
