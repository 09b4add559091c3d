"""Benchmark reports: what every script under eval/ writes with --json."""

from __future__ import annotations

import json
from pathlib import Path


def output_file(suffixes: tuple[str, ...]):
    """An argparse type for a file a script will write (--json, --sheet): checked before the work
    starts, so a folder or a wrong suffix fails at once, not after a long run."""
    import argparse

    def check(text: str) -> Path:
        path = Path(text)
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name in it, e.g. {path / ('out' + suffixes[0])}")
        if path.suffix.lower() not in suffixes:
            raise argparse.ArgumentTypeError(f"{text}: give a {' or '.join(suffixes)} file")
        for parent in path.parents:  # write_report makes missing folders, but not under a file
            if parent.exists():
                if not parent.is_dir():
                    raise argparse.ArgumentTypeError(f"{text}: {parent} is a file, not a folder")
                break
        return path

    return check


JSON_FILE = output_file((".json",))
PNG_FILE = output_file((".png",))


def write_report(path: str | Path, report: dict) -> Path:
    """Write `report` as indented JSON to `path`, making its folder; returns the path. Values JSON
    has no type for (a Path among the arguments) are written as their text."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return path
