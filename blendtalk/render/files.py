"""Output files written whole or not at all, under names checked before any work is done."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MAX_NAME_BYTES = 255  # a file name's length limit on Linux, macOS and Windows file systems (NAME_MAX)
TMP_NAME_CHARS = 40  # characters of the final name kept in the temporary one, which must stay under MAX_NAME_BYTES too


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary path next to `path`; move it onto `path` if the block succeeds.

    On any exception (KeyboardInterrupt included) the temporary file is removed and `path` is
    left as it was. Same folder, so the final `os.replace` is an atomic rename.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name[:TMP_NAME_CHARS]}.{uuid.uuid4().hex[:12]}.part")  # short: any valid name has one
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def output_path(path: str | os.PathLike, suffix: str) -> Path:
    """`path` as a Path once it is a writable name ending in `suffix` in an existing folder; else ValueError."""
    path = Path(path)
    if "\0" in str(path):
        raise ValueError(f"file names cannot contain NUL characters, got {str(path)!r}")
    if len(os.fsencode(path.name)) > MAX_NAME_BYTES:
        raise ValueError(f"file name {path.name[:40]!r}... is {len(os.fsencode(path.name))} bytes; "
                         f"at most {MAX_NAME_BYTES} are allowed")
    if path.suffix.lower() != suffix:
        raise ValueError(f"expected a {suffix} file name, got {path.name!r}")
    if not path.parent.is_dir():
        raise ValueError(f"folder {str(path.parent)!r} does not exist; create it first")
    return path
