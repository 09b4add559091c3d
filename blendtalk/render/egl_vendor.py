"""Point glvnd's EGL at NVIDIA's driver on a GPU host that mounts the driver but never registered it.

glvnd's libEGL.so.1 draws through a vendor library (Mesa's libEGL_mesa, NVIDIA's libEGL_nvidia)
named in JSON files in its vendor folders. A container that mounts the NVIDIA driver for CUDA
often carries libEGL_nvidia.so.0 but no vendor file for it (or only Mesa's), so EGL finds the
software rasterizer or nothing at all. `prepare_nvidia_egl` runs before the process's first EGL
call (`gl.gl_context`): where no vendor file names NVIDIA's library and that library loads, it
writes one into the cache folder and names it, ahead of the files already there, in
__EGL_VENDOR_LIBRARY_FILENAMES, which glvnd reads when it first loads its vendors. A person's own
setting of that variable (or of __EGL_VENDOR_LIBRARY_DIRS) is left alone.

The dispatch libraries themselves (libEGL.so.1, libGLdispatch.so.0, libOpenGL.so.0 or libGL.so.1)
come from the system: Debian's libegl1, libopengl0 and libgl1 (`packages.txt`, `.ci/run`).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
from collections.abc import Callable, MutableMapping, Sequence
from pathlib import Path

from ..constants import CACHE_ENV, DEFAULT_CACHE_DIR

logger = logging.getLogger(__name__)

NVIDIA_EGL = "libEGL_nvidia.so.0"  # the NVIDIA driver's EGL vendor library (soname)
VENDOR_FOLDERS = ("/etc/glvnd/egl_vendor.d", "/usr/share/glvnd/egl_vendor.d")  # glvnd's default search, in its order
FILES_ENV = "__EGL_VENDOR_LIBRARY_FILENAMES"  # glvnd: the vendor files to load, ':'-separated, in order
FOLDERS_ENV = "__EGL_VENDOR_LIBRARY_DIRS"  # glvnd: folders searched instead of VENDOR_FOLDERS
VENDOR_FILE = {"file_format_version": "1.0.0", "ICD": {"library_path": NVIDIA_EGL}}


def loads(library: str) -> bool:
    """True when the dynamic loader finds and loads `library` (a soname) in this process."""
    try:
        ctypes.CDLL(library)
    except OSError:
        return False
    return True


def vendor_files(folders: Sequence[str | os.PathLike] = VENDOR_FOLDERS) -> list[Path]:
    """glvnd's EGL vendor files in `folders`, in the order glvnd loads them (by name within a folder)."""
    found = []
    for folder in folders:
        try:
            found += sorted(p for p in Path(folder).iterdir() if p.suffix == ".json" and p.is_file())
        except OSError:  # no such folder: nothing registered there
            continue
    return found


def _library(path: Path) -> str:
    """The vendor library a vendor file names, or '' when it is not readable."""
    try:
        return str(json.loads(path.read_text())["ICD"]["library_path"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def prepare_nvidia_egl(environ: MutableMapping[str, str] = os.environ, folders: Sequence[str | os.PathLike] = VENDOR_FOLDERS,
                       cache: str | os.PathLike | None = None, can_load: Callable[[str], bool] = loads) -> str | None:
    """Register NVIDIA's EGL vendor library with glvnd through `environ` where the system did not.

    Does nothing (returns None) when the variables are already set, when a vendor file in `folders`
    names an NVIDIA library, or when NVIDIA's library does not load (no driver: Mesa stays the only
    vendor). Otherwise writes the vendor file into `cache` (default: $BLENDTALK_CACHE, else
    ~/.cache/blendtalk), sets environ[FILES_ENV] to it followed by the files already registered, and
    returns that value. Call it before the process's first EGL call: glvnd reads the variable once.
    """
    if environ.get(FILES_ENV) or environ.get(FOLDERS_ENV):
        return None
    registered = vendor_files(folders)
    if any("nvidia" in _library(p).lower() for p in registered) or not can_load(NVIDIA_EGL):
        return None
    folder = Path(cache or environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser() / "egl_vendor.d"
    path = folder / "10_nvidia.json"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps(VENDOR_FILE)
        if not path.is_file() or path.read_text() != text:
            partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # atomic: other processes may read it
            partial.write_text(text)
            partial.replace(path)
    except OSError as err:  # a read-only home: EGL goes on with what the system registered
        logger.info("could not register NVIDIA's EGL driver (%s); OpenGL uses the system's EGL vendors", err)
        return None
    # NVIDIA first: glvnd lists its devices first, and EGL's first device is the one drawn on.
    environ[FILES_ENV] = os.pathsep.join([str(path), *(str(p) for p in registered)])
    logger.info("registered NVIDIA's EGL driver with glvnd: %s=%s", FILES_ENV, environ[FILES_ENV])
    return environ[FILES_ENV]
