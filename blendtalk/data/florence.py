"""Florence 4D Facial Expression dataset on disk: reader and writer.

Florence4D (Principi et al., FG 2023; MICC, University of Florence) gives per-subject sequences of
3D faces, one sequence per expression (about 70 expressions such as Afraid, Disgust, Sad1, Smile2),
registered to the FLAME topology (V=5023). The release page states no file layout, so this module
follows the one its authors' lab reads in EmoVOCA (miccunifi/EmoVOCA,
`EmoVOCA_generator/generate_condition_meshes.py` reads `<root>/<subject>/<exp>/<exp>_30.ply`, and
`emovoca_generator.py` reads one neutral `<subject>.ply` per subject). Layout, as an assumption:

    root/<subject>/<expression>/<expression>_<frame>.obj|.ply   one mesh per frame, frame = 0, 1, ...
    root/<subject>/<expression>/vertices.npy                    optional (T, V, 3) float32, same frames
    root/<subject>.obj|.ply                                     optional neutral template of the subject
    root/blendtalk_corpus.json                                  blendtalk's sidecar (frame rate)

Frame files whose stem is just a number (`00012.obj`) are read too; frames sort numerically. When
vertices.npy is present it is memory-mapped and the meshes are not parsed. The synthetic expression
corpus is written through `write_florence`, the single definition of this layout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .vocaset import META_FILE, NpyFile, read_meta, write_meta

FLORENCE_FPS = 30  # Hz; assumed when a corpus has no sidecar (the release states no frame rate)
MESH_SUFFIXES = (".obj", ".ply")
NPY_NAME = "vertices.npy"
LAYOUT = ("Florence4D layout: <root>/<subject>/<expression>/<expression>_<frame>.obj|.ply "
          "(or vertices.npy (T, V, 3)), optional <root>/<subject>.obj|.ply template")
_FRAME_RE = re.compile(r"^(?:.*_)?(\d+)$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# ---------------------------------------------------------------- meshes


def read_obj_vertices(path: str | Path) -> np.ndarray:
    """(V, 3) float32 from the `v` lines of an OBJ file (extra per-vertex colours are ignored)."""
    path = Path(path)
    lines = [line[2:] for line in path.read_bytes().splitlines() if line[:2] in (b"v ", b"v\t")]
    if not lines:
        raise ValueError(f"{path} has no vertex lines ('v x y z'); is it an OBJ mesh?")
    values = np.array(b" ".join(lines).split(), dtype=np.float64)
    if values.size != 3 * len(lines):  # some lines carry colours: keep the first three numbers of each
        values = np.array([line.split()[:3] for line in lines], dtype=np.float64)
    return values.reshape(-1, 3).astype(np.float32)


def read_obj_faces(path: str | Path) -> np.ndarray:
    """(F, 3) int64 zero-based triangles from the `f` lines of an OBJ file; polygons are fanned."""
    path = Path(path)
    tris = []
    for line in path.read_bytes().splitlines():
        if line[:2] in (b"f ", b"f\t"):
            idx = [int(tok.split(b"/")[0]) for tok in line.split()[1:]]
            if min(idx) < 1:
                raise ValueError(f"{path}: only positive (absolute) OBJ face indices are supported, got {line!r}")
            tris.extend((idx[0] - 1, idx[k] - 1, idx[k + 1] - 1) for k in range(1, len(idx) - 1))
    return np.array(tris, dtype=np.int64).reshape(-1, 3)


def read_mesh_vertices(path: str | Path) -> np.ndarray:
    """(V, 3) float32 vertices of an .obj (fast parser) or .ply (trimesh) file."""
    path = Path(path)
    if path.suffix.lower() == ".obj":
        return read_obj_vertices(path)
    if path.suffix.lower() == ".ply":
        import trimesh

        return np.asarray(trimesh.load(str(path), process=False, force="mesh").vertices, dtype=np.float32)
    raise ValueError(f"{path}: unsupported mesh type {path.suffix!r}; expected one of {MESH_SUFFIXES}")


def write_obj(path: str | Path, vertices: np.ndarray, faces: np.ndarray | None = None, face_text: str | None = None) -> None:
    """Write vertices (V, 3) and optional zero-based faces (F, 3) as an OBJ file."""
    v = np.asarray(vertices, dtype=np.float64)
    text = ("v %.6f %.6f %.6f\n" * len(v)) % tuple(v.ravel())
    if face_text is None and faces is not None:
        face_text = _face_text(faces)
    Path(path).write_text(text + (face_text or ""))


def _face_text(faces: np.ndarray) -> str:
    f = np.asarray(faces, dtype=np.int64) + 1
    return ("f %d %d %d\n" * len(f)) % tuple(f.ravel())


class MeshFrames:
    """The frames of one sequence stored as one mesh file each, parsed on first use into (T, V, 3).

    With `cache_path`, the parsed array is saved there once (outside the dataset root) and
    memory-mapped from then on; pickles without the array when that cache exists.
    """

    def __init__(self, paths: tuple[Path, ...], cache_path: Path | None = None):
        self.paths, self.cache_path, self._array = tuple(paths), cache_path, None

    @property
    def num_vertices(self) -> int:
        return len(read_mesh_vertices(self.paths[0])) if self._array is None else self._array.shape[1]

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            cache = self.cache_path
            if cache is not None and cache.is_file():
                arr = np.load(cache, mmap_mode="r")
                if arr.shape[0] == len(self.paths):
                    self._array = arr
                    return arr
            frames = [read_mesh_vertices(p) for p in self.paths]
            for p, f in zip(self.paths, frames):
                if f.shape != frames[0].shape:
                    raise ValueError(f"{p} has {len(f)} vertices but {self.paths[0]} has {len(frames[0])}; "
                                     "all frames of a sequence must share one topology")
            arr = np.stack(frames)  # (T, V, 3)
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_suffix(".partial.npy")
                np.save(tmp, arr)
                tmp.replace(cache)
                arr = np.load(cache, mmap_mode="r")
            self._array = arr
        return self._array

    def __getstate__(self):
        keep = self.cache_path is None or not self.cache_path.is_file()
        return {"paths": self.paths, "cache_path": self.cache_path, "_array": self._array if keep else None}


# ---------------------------------------------------------------- index


@dataclass(frozen=True, eq=False)
class FlorenceSequence:
    """One expression sequence of one subject. source.array: (T, V, 3); template: (V, 3) or None."""

    subject: str
    expression: str
    source: NpyFile | MeshFrames
    num_frames: int
    template: np.ndarray | None
    fps: float

    @property
    def name(self) -> str:
        return f"{self.subject}/{self.expression}"

    @property
    def sentence_number(self) -> None:  # expression sequences carry no sentence (see datasets.Split)
        return None

    @property
    def rows(self) -> np.ndarray:
        return np.arange(self.num_frames, dtype=np.int64)

    @property
    def num_vertices(self) -> int:
        src = self.source
        return src.array.shape[1] if isinstance(src, NpyFile) else src.num_vertices

    @property
    def vertices(self) -> np.ndarray:
        """(T, V, 3) float32: a np.memmap when vertices.npy (or a cache) exists, else parsed meshes."""
        return self.source.array


@dataclass(frozen=True, eq=False)
class FlorenceIndex:
    """All expression sequences under a Florence4D-layout root."""

    root: Path
    fps: float
    sequences: tuple[FlorenceSequence, ...] = field(default_factory=tuple)

    @property
    def subjects(self) -> tuple[str, ...]:
        return tuple(sorted({s.subject for s in self.sequences}))

    @property
    def expressions(self) -> tuple[str, ...]:
        return tuple(sorted({s.expression for s in self.sequences}))

    def get(self, subject: str, expression: str) -> FlorenceSequence:
        for s in self.sequences:
            if s.subject == subject and s.expression == expression:
                return s
        raise KeyError(f"no sequence {subject}/{expression} in {self.root}")

    def load_faces(self) -> np.ndarray | None:
        """(F, 3) triangles of the first OBJ file found (templates first), or None."""
        objs = sorted(self.root.glob("*.obj"))
        objs += [p for s in self.sequences if isinstance(s.source, MeshFrames) for p in s.source.paths[:1]
                 if p.suffix.lower() == ".obj"][:1]
        return read_obj_faces(objs[0]) if objs else None

    def __len__(self) -> int:
        return len(self.sequences)

    def __iter__(self):
        return iter(self.sequences)


def _frame_files(folder: Path) -> tuple[Path, ...]:
    numbered = {}
    for p in folder.iterdir():
        m = _FRAME_RE.match(p.stem)
        if p.suffix.lower() in MESH_SUFFIXES and p.is_file() and m:
            k = int(m.group(1))
            if k in numbered:
                raise ValueError(f"{folder} has two files for frame {k}: {numbered[k].name} and {p.name}")
            numbered[k] = p
    return tuple(numbered[k] for k in sorted(numbered))


def _template(root: Path, subject: str) -> np.ndarray | None:
    for suffix in MESH_SUFFIXES:
        if (root / f"{subject}{suffix}").is_file():
            return read_mesh_vertices(root / f"{subject}{suffix}")
    return None


def read_florence(root: str | Path, fps: float | None = None, cache_dir: str | Path | None = None) -> FlorenceIndex:
    """Index a Florence4D-layout root (see module docstring); frames load lazily.

    fps: frame rate of the sequences (default: the sidecar's, else FLORENCE_FPS). cache_dir: where
    sequences stored as meshes are saved as .npy after their first parse (never inside root).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Florence4D root {root} is not a directory; expected the {LAYOUT}")
    fps = float(fps if fps is not None else read_meta(root).get("fps", FLORENCE_FPS))
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None and cache.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"cache_dir {cache} must lie outside the dataset root {root}")
    sequences = []
    for sdir in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        template = _template(root, sdir.name)
        for edir in sorted(d for d in sdir.iterdir() if d.is_dir() and not d.name.startswith(".")):
            frames, npy = _frame_files(edir), edir / NPY_NAME
            if npy.is_file():
                shape = np.load(npy, mmap_mode="r").shape
                if len(shape) != 3 or shape[2] != 3 or shape[0] == 0:
                    raise ValueError(f"{npy} must have shape (T, V, 3) with T >= 1, got {shape}")
                if frames and len(frames) != shape[0]:
                    raise ValueError(f"{npy} has {shape[0]} frames but {edir} holds {len(frames)} mesh frames")
                source, num_frames = NpyFile(npy), shape[0]
            elif frames:
                cpath = None if cache is None else cache / sdir.name / f"{edir.name}.npy"
                source, num_frames = MeshFrames(frames, cpath), len(frames)
            else:
                continue
            sequences.append(FlorenceSequence(sdir.name, edir.name, source, num_frames, template, fps))
    if not sequences:
        raise FileNotFoundError(f"no expression sequences found under {root}; expected the {LAYOUT}")
    return FlorenceIndex(root=root, fps=fps, sequences=tuple(sequences))


# ---------------------------------------------------------------- writer


def write_florence(root: str | Path, subject: str, expression: str, frames: Any, faces: Any | None = None,
                   template: Any | None = None, fps: float | None = None, write_meshes: bool = True,
                   write_npy: bool = True, overwrite: bool = False) -> Path:
    """Write one expression sequence in the Florence4D layout; returns its folder.

    frames: (T, V, 3); faces: (F, 3) zero-based triangles (needed for meshes); template: (V, 3) neutral
    face of the subject, written once as <root>/<subject>.obj (a different one already there is an
    error); fps goes to the sidecar. write_meshes writes one OBJ per frame as the release does;
    write_npy adds vertices.npy, which readers memory-map instead of parsing meshes.
    """
    root = Path(root)
    for kind, name in (("subject", subject), ("expression", expression)):
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError(f"{kind} name must be letters, digits, '_', '-', '.' (not starting with a symbol), got {name!r}")
    v = np.asarray(frames, dtype=np.float32)
    if v.ndim != 3 or v.shape[2] != 3 or len(v) == 0:
        raise ValueError(f"frames of {subject}/{expression} must have shape (T, V, 3) with T >= 1, got {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError(f"frames of {subject}/{expression} contain NaN or infinite values")
    if not (write_meshes or write_npy):
        raise ValueError("nothing to write: set write_meshes or write_npy")
    if faces is not None:
        faces = np.asarray(faces)
        if faces.ndim != 2 or faces.shape[1] != 3 or faces.min() < 0 or faces.max() >= v.shape[1]:
            raise ValueError(f"faces must be (F, 3) indices below V={v.shape[1]}, got shape {faces.shape}")
    elif write_meshes:
        raise ValueError("faces (F, 3) are needed to write meshes; pass faces or write_meshes=False")
    folder, tpath = root / subject / expression, root / f"{subject}.obj"
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{folder} is not empty; pass overwrite=True to replace the sequence")
    if template is not None:
        t = np.asarray(template, dtype=np.float32)
        if t.shape != v.shape[1:]:
            raise ValueError(f"template of {subject} must have shape {v.shape[1:]}, got {t.shape}")
        if tpath.is_file() and not np.allclose(read_obj_vertices(tpath), t, atol=1e-5):
            raise ValueError(f"{tpath} already holds a different template for {subject}")
    folder.mkdir(parents=True, exist_ok=True)
    if template is not None and not tpath.is_file():
        write_obj(tpath, t, faces)
    if write_meshes:
        for old in _frame_files(folder):
            old.unlink()  # overwrite=True: stale frames of a longer earlier sequence would read as ours
        face_text = _face_text(faces)
        for t_idx, frame in enumerate(v):
            write_obj(folder / f"{expression}_{t_idx}.obj", frame, face_text=face_text)
    if write_npy:
        np.save(folder / NPY_NAME, v)
    elif (folder / NPY_NAME).exists():
        (folder / NPY_NAME).unlink()
    write_meta(root, layout="florence4d", **({} if fps is None else {"fps": float(fps)}))
    return folder


__all__ = ["FLORENCE_FPS", "LAYOUT", "META_FILE", "FlorenceIndex", "FlorenceSequence", "MeshFrames",
           "read_florence", "read_mesh_vertices", "read_obj_faces", "read_obj_vertices", "write_florence", "write_obj"]
