"""Benchmark reports: what every script under eval/ writes with --json."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(path: str | Path, report: dict) -> Path:
    """Write `report` as indented JSON to `path`, making its folder; returns the path. Values JSON
    has no type for (a Path among the arguments) are written as their text."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return path
