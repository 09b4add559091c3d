"""How blendtalk starts its worker processes (phone recognition, a second llvmpipe): plain
`python -m MODULE` subprocesses, not multiprocessing ones, so that they never re-import the
caller's main script and never fork a process that holds CUDA or an OpenGL context."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def worker_command(module: str, *args: str) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) that run `python -m module args...` with this very blendtalk importable
    (first on PYTHONPATH, whether or not it is installed)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return [sys.executable, "-m", module, *args], env
