"""VOCASET on disk: the raw release layout and FaceFormer's processed layout, readers and writers.

These functions are the one place where the layouts are defined; the synthetic corpus generator
writes through them, so a corpus on the face rig (V=4278) reads exactly like the real data (V=5023).

Raw release (VOCA, Cudeiro et al. CVPR 2019; read by TimoBolkart/voca `utils/data_handler.py` and
by FaceFormer's `vocaset/process_voca_data.py`):

    root/data_verts.npy        (N, V, 3) float32, every frame of every sequence, read memory-mapped
    root/raw_audio_fixed.pkl   {subject: {sentence: {'audio': (S,) int16, 'sample_rate': int}}}
    root/templates.pkl         {subject: (V, 3) neutral face}
    root/subj_seq_to_idx.pkl   {subject: {sentence: {frame_number: row of data_verts}}}

FaceFormer layout (EvelynFan/FaceFormer `vocaset/`, produced from the raw one by process_voca_data.py):

    root/vertices_npy/<subject>_<sentence>.npy   (T, V*3), all frames at the capture rate
    root/wav/<subject>_<sentence>.wav
    root/templates.pkl

Subjects are named like FaceTalk_170725_00137_TA, sentences sentence01..sentence40. VOCASET is
captured at 60 fps; FaceFormer and CodeTalker subsample to 30 fps when loading (`[::2]`), which the
datasets here do with their `fps` argument. blendtalk adds a sidecar `blendtalk_corpus.json` with
what the format leaves implicit (frame rate); real data have none and get VOCASET_FPS.

The pickles are read only from a local dataset root that the user chose, and only through
`load_pickle`, whose unpickler admits numpy arrays and builtin containers and nothing that can run code.
"""

from __future__ import annotations

import json
import pickle
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ..safe_pickle import allowed_globals

VOCASET_FPS = 60  # Hz, capture rate of the VOCASET release (and of FaceFormer's vertices_npy files)
META_FILE = "blendtalk_corpus.json"  # our sidecar: frame rate and provenance of a written corpus
RAW_FILES = ("data_verts.npy", "raw_audio_fixed.pkl", "templates.pkl", "subj_seq_to_idx.pkl")
RAW_LAYOUT = "raw VOCASET layout: " + ", ".join(RAW_FILES)
FACEFORMER_LAYOUT = "FaceFormer layout: vertices_npy/<subject>_<sentence>.npy, wav/<subject>_<sentence>.wav, templates.pkl"
_NPY_HEADER_BYTES = 128  # fixed .npy header size so the row count can be patched in after streaming
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# ---------------------------------------------------------------- safe pickles, sidecar, memmaps


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy-array reconstruction and builtin containers.

    A dataset pickle that names any other global (os.system, builtins.eval, ...) is refused with an
    UnpicklingError before anything is called.
    """

    def find_class(self, module: str, name: str) -> Any:
        obj = allowed_globals().get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: dataset pickles may only hold numpy arrays "
                "and builtin containers"
            )
        return obj


def load_pickle(path: str | Path) -> Any:
    """Load a dataset pickle from a local dataset root chosen by the user, without running code.

    latin1 decoding reads the Python 2 pickles of the VOCASET release (as VOCA and FaceFormer do).
    """
    path = Path(path)
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(f, encoding="latin1").load()
        except pickle.UnpicklingError as e:
            raise pickle.UnpicklingError(f"{path}: {e}") from None


def read_meta(root: str | Path) -> dict:
    """The sidecar written by blendtalk's writers ({} for real data, which has none)."""
    path = Path(root) / META_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def write_meta(root: str | Path, **fields: Any) -> None:
    """Merge `fields` into the sidecar; a different value for a field already there is an error."""
    meta = read_meta(root)
    for key, value in fields.items():
        if key in meta and meta[key] != value:
            raise ValueError(f"{Path(root) / META_FILE} already has {key}={meta[key]!r}, cannot write {value!r}")
        meta[key] = value
    (Path(root) / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))


class NpyFile:
    """A read-only memory-mapped .npy file, opened on first use.

    Pickles as its path, so DataLoader workers reopen the map instead of copying the data.
    `shape` optionally reshapes the stored array, e.g. (T, V*3) -> (T, V, 3).
    """

    def __init__(self, path: str | Path, shape: tuple[int, ...] | None = None):
        self.path, self.shape, self._array = Path(path), shape, None

    @property
    def array(self) -> np.memmap:
        if self._array is None:
            arr = np.load(self.path, mmap_mode="r")
            self._array = arr.reshape(self.shape) if self.shape is not None else arr
        return self._array

    def __getstate__(self):
        return {"path": self.path, "shape": self.shape, "_array": None}


# ---------------------------------------------------------------- index


@dataclass(frozen=True, eq=False)
class VocaSequence:
    """One sentence of one speaker. Frames stay on disk: `vertices` is a memmap view when contiguous.

    source: the backing (N, V, 3) array; rows: (T,) its rows in frame order; template: (V, 3).
    Audio is held (raw layout, `audio_data` as stored) or read on demand (FaceFormer layout, `audio_path`).
    """

    subject: str
    sentence: str
    source: NpyFile
    rows: np.ndarray
    template: np.ndarray
    fps: float
    audio_data: np.ndarray | None = None
    audio_path: Path | None = None
    sample_rate: int | None = None

    @property
    def name(self) -> str:
        return f"{self.subject}_{self.sentence}"

    @property
    def sentence_number(self) -> int | None:
        m = re.search(r"(\d+)$", self.sentence)
        return int(m.group(1)) if m else None

    @property
    def num_frames(self) -> int:
        return len(self.rows)

    @property
    def num_vertices(self) -> int:
        return self.template.shape[0]

    @property
    def has_audio(self) -> bool:
        return self.audio_data is not None or self.audio_path is not None

    @property
    def vertices(self) -> np.ndarray:
        """(T, V, 3) float32; a np.memmap slice when the rows are contiguous (always, as written here)."""
        r = self.rows
        if len(r) and np.all(np.diff(r) == 1):
            return self.source.array[r[0] : r[-1] + 1]
        return np.asarray(self.source.array[r])

    def load_audio(self) -> tuple[np.ndarray, int]:
        """(S,) float32 samples in [-1, 1] and their sample rate in Hz."""
        if self.audio_data is not None:
            try:
                return _to_float(self.audio_data), int(self.sample_rate)
            except ValueError as e:
                raise ValueError(f"audio of {self.name}: {e}") from None
        if self.audio_path is None:
            raise ValueError(f"sequence {self.name} has no audio")
        import soundfile

        samples, sr = soundfile.read(str(self.audio_path), dtype="float32", always_2d=True)
        return samples.mean(axis=1), int(sr)


@dataclass(frozen=True, eq=False)
class VocaIndex:
    """All sequences of a VOCASET-format corpus. layout: 'raw' or 'faceformer'; templates: subject -> (V, 3)."""

    root: Path
    layout: str
    fps: float
    templates: dict[str, np.ndarray]
    sequences: tuple[VocaSequence, ...] = field(default_factory=tuple)

    @property
    def subjects(self) -> tuple[str, ...]:
        return tuple(sorted({s.subject for s in self.sequences}))

    @property
    def num_vertices(self) -> int:
        return next(iter(self.templates.values())).shape[0]

    def get(self, subject: str, sentence: str) -> VocaSequence:
        for s in self.sequences:
            if s.subject == subject and s.sentence == sentence:
                return s
        raise KeyError(f"no sequence {subject}_{sentence} in {self.root}")

    def __len__(self) -> int:
        return len(self.sequences)

    def __iter__(self):
        return iter(self.sequences)


# ---------------------------------------------------------------- writers


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"{kind} name must be letters, digits, '_', '-', '.' (not starting with a symbol), got {name!r}")
    return name


def _check_templates(templates: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for subject, t in templates.items():
        t = np.asarray(t, dtype=np.float32)
        if t.ndim != 2 or t.shape[1] != 3:
            raise ValueError(f"template of {subject!r} must have shape (V, 3), got {t.shape}")
        out[_check_name("subject", subject)] = t
    if not out:
        raise ValueError("at least one subject template is needed")
    shapes = {t.shape for t in out.values()}
    if len(shapes) > 1:
        raise ValueError(f"all templates must have the same vertex count, got shapes {sorted(shapes)}")
    return out


def _check_frames(name: str, vertices: Any, num_vertices: int) -> np.ndarray:
    v = np.asarray(vertices, dtype=np.float32)
    if v.ndim != 3 or v.shape[1:] != (num_vertices, 3) or len(v) == 0:
        raise ValueError(f"vertices of {name} must have shape (T, {num_vertices}, 3) with T >= 1, got {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError(f"vertices of {name} contain NaN or infinite values")
    return v


def _to_int16(name: str, audio: Any) -> np.ndarray:
    a = np.asarray(audio)
    if a.ndim != 1:
        raise ValueError(f"audio of {name} must be mono with shape (S,), got {a.shape}")
    if a.dtype == np.int16:
        return a
    if not np.issubdtype(a.dtype, np.floating) or not np.isfinite(a).all() or np.abs(a).max(initial=0) > 1.0:
        raise ValueError(f"audio of {name} must be int16 or finite floats in [-1, 1], got dtype {a.dtype}")
    return np.round(a * 32767).astype(np.int16)


def _to_float(audio: np.ndarray) -> np.ndarray:
    a = np.asarray(audio)
    if a.ndim != 1:
        raise ValueError(f"stored audio must be mono with shape (S,), got {a.shape}")
    if np.issubdtype(a.dtype, np.integer):
        return (a.astype(np.float32) / (np.iinfo(a.dtype).max + 1)).reshape(-1)
    return a.astype(np.float32).reshape(-1)


def _npy_header(shape: tuple[int, ...]) -> bytes:
    text = "{'descr': '<f4', 'fortran_order': False, 'shape': %r, }" % (tuple(shape),)
    text += " " * (_NPY_HEADER_BYTES - 10 - len(text) - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


def _refuse_existing(root: Path, names: Iterable[str], overwrite: bool) -> None:
    present = [n for n in names if (root / n).exists()]
    if present and not overwrite:
        raise FileExistsError(f"{root} already holds {', '.join(present)}; pass overwrite=True to replace them")


class VocasetRawWriter:
    """Stream sequences into the raw VOCASET layout; frames go straight to disk, never all in memory.

    with VocasetRawWriter(root, templates, fps=30) as w:
        w.add("spk00", "sentence01", vertices (T, V, 3), audio (S,), sample_rate)

    data_verts.npy is written to a .partial file whose header is patched with the final row count
    and renamed on a clean exit; the pickles are written last. fps goes to the sidecar.
    """

    def __init__(self, root: str | Path, templates: Mapping[str, Any], fps: float = VOCASET_FPS,
                 overwrite: bool = False, meta: Mapping[str, Any] | None = None):
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        _refuse_existing(self.root, RAW_FILES + (META_FILE,), overwrite)
        if overwrite and (self.root / META_FILE).exists():
            (self.root / META_FILE).unlink()
        self.templates = _check_templates(templates)
        self.num_vertices = next(iter(self.templates.values())).shape[0]
        self.fps, self.meta = float(fps), dict(meta or {})
        self._partial = self.root / "data_verts.npy.partial"
        self._file = open(self._partial, "wb")
        self._file.write(_npy_header((0, self.num_vertices, 3)))
        self._rows = 0
        self._index: dict[str, dict[str, dict[int, int]]] = {}
        self._audio: dict[str, dict[str, dict[str, Any]]] = {}

    def add(self, subject: str, sentence: str, vertices: Any, audio: Any, sample_rate: int) -> None:
        """Append one sequence: vertices (T, V, 3) in the templates' units, audio (S,) mono."""
        name = f"{subject}_{sentence}"
        if subject not in self.templates:
            raise ValueError(f"no template for subject {subject!r}; templates have {sorted(self.templates)}")
        _check_name("sentence", sentence)
        if "_" in sentence:
            raise ValueError(f"sentence names may not contain '_' (file names split on it), got {sentence!r}")
        if sentence in self._index.get(subject, {}):
            raise ValueError(f"sequence {name} was already added")
        if not (isinstance(sample_rate, (int, np.integer)) and sample_rate > 0):
            raise ValueError(f"sample_rate of {name} must be a positive int in Hz, got {sample_rate!r}")
        v = _check_frames(name, vertices, self.num_vertices)
        a = _to_int16(name, audio)
        self._file.write(np.ascontiguousarray(v, dtype="<f4").tobytes())
        self._index.setdefault(subject, {})[sentence] = {t: self._rows + t for t in range(len(v))}
        self._audio.setdefault(subject, {})[sentence] = {"audio": a, "sample_rate": int(sample_rate)}
        self._rows += len(v)

    def close(self) -> None:
        """Finish data_verts.npy and write the pickles and the sidecar."""
        if self._file.closed:
            return
        self._file.seek(0)
        self._file.write(_npy_header((self._rows, self.num_vertices, 3)))
        self._file.close()
        self._partial.replace(self.root / "data_verts.npy")
        for fname, obj in (("templates.pkl", self.templates), ("subj_seq_to_idx.pkl", self._index),
                           ("raw_audio_fixed.pkl", self._audio)):
            with open(self.root / fname, "wb") as f:
                pickle.dump(obj, f, protocol=4)
        write_meta(self.root, layout="raw", fps=self.fps, **self.meta)

    def __enter__(self) -> "VocasetRawWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # leave no half-written corpus that would read as complete
            self._file.close()
            self._partial.unlink(missing_ok=True)


def _items(sequences: Mapping | Iterable) -> Iterable[tuple[str, str, Any]]:
    if isinstance(sequences, Mapping):
        return ((s, n, v) for (s, n), v in sequences.items())
    return iter(sequences)


def write_vocaset_raw(root: str | Path, sequences: Mapping | Iterable, templates: Mapping[str, Any],
                      audio: Mapping[tuple[str, str], tuple[Any, int]], fps: float = VOCASET_FPS,
                      overwrite: bool = False, meta: Mapping[str, Any] | None = None) -> Path:
    """Write the raw VOCASET layout (see module docstring). Returns root.

    sequences: {(subject, sentence): vertices (T, V, 3)} or an iterable of (subject, sentence, vertices)
    (a generator keeps memory flat); templates: {subject: (V, 3)}; audio: {(subject, sentence):
    (samples (S,), sample_rate)}; fps: frame rate of the vertices (the real release: 60).
    """
    with VocasetRawWriter(root, templates, fps=fps, overwrite=overwrite, meta=meta) as w:
        for subject, sentence, vertices in _items(sequences):
            if (subject, sentence) not in audio:
                raise ValueError(f"no audio for sequence {subject}_{sentence}")
            samples, sr = audio[(subject, sentence)]
            w.add(subject, sentence, vertices, samples, sr)
    return Path(root)


def write_vocaset_processed(root: str | Path, sequences: Mapping | Iterable, templates: Mapping[str, Any],
                            audio: Mapping[tuple[str, str], tuple[Any, int]] | None = None,
                            fps: float = VOCASET_FPS, overwrite: bool = False,
                            meta: Mapping[str, Any] | None = None) -> Path:
    """Write FaceFormer's layout (see module docstring); same arguments as write_vocaset_raw.

    Vertices are stored (T, V*3) float32 as FaceFormer expects; audio as 16-bit PCM wav.
    """
    import soundfile

    root = Path(root)
    templates = _check_templates(templates)
    num_vertices = next(iter(templates.values())).shape[0]
    _refuse_existing(root, ("templates.pkl", "vertices_npy", "wav", META_FILE), overwrite)
    (root / "vertices_npy").mkdir(parents=True, exist_ok=True)
    (root / "wav").mkdir(exist_ok=True)
    if overwrite and (root / META_FILE).exists():
        (root / META_FILE).unlink()
    for subject, sentence, vertices in _items(sequences):
        name = f"{subject}_{sentence}"
        if subject not in templates:
            raise ValueError(f"no template for subject {subject!r}; templates have {sorted(templates)}")
        if "_" in _check_name("sentence", sentence):
            raise ValueError(f"sentence names may not contain '_' (file names split on it), got {sentence!r}")
        v = _check_frames(name, vertices, num_vertices)
        np.save(root / "vertices_npy" / f"{name}.npy", v.reshape(len(v), -1))
        if audio is not None:
            if (subject, sentence) not in audio:
                raise ValueError(f"no audio for sequence {name}")
            samples, sr = audio[(subject, sentence)]
            soundfile.write(str(root / "wav" / f"{name}.wav"), _to_int16(name, samples), int(sr), subtype="PCM_16")
    with open(root / "templates.pkl", "wb") as f:
        pickle.dump(templates, f, protocol=4)
    write_meta(root, layout="faceformer", fps=float(fps), **dict(meta or {}))
    return root


# ---------------------------------------------------------------- readers


def read_vocaset(root: str | Path, layout: str | None = None) -> VocaIndex:
    """Index a VOCASET-format corpus in the raw or FaceFormer layout (detected unless `layout` names it).

    root must be a local dataset folder the user chose (its pickles are read with load_pickle).
    Frames are not loaded: each sequence's `vertices` is a view of a memory map.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"VOCASET root {root} is not a directory; expected the {RAW_LAYOUT} or the {FACEFORMER_LAYOUT}")
    if layout is None:
        if (root / "data_verts.npy").exists():
            layout = "raw"
        elif (root / "vertices_npy").is_dir():
            layout = "faceformer"
        else:
            raise FileNotFoundError(
                f"no VOCASET data in {root}: found neither data_verts.npy nor vertices_npy/; expected the "
                f"{RAW_LAYOUT}, or the {FACEFORMER_LAYOUT}"
            )
    if layout == "raw":
        return _read_raw(root)
    if layout == "faceformer":
        return _read_faceformer(root)
    raise ValueError(f"layout must be 'raw', 'faceformer' or None (detect), got {layout!r}")


def _load_templates(path: Path, expected: str) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"missing {path}; expected the {expected}")
    raw = load_pickle(path)
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path} must hold a dict subject -> (V, 3) template, got {type(raw).__name__}")
    try:
        return _check_templates({str(k): v for k, v in raw.items()})
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _fps(root: Path) -> float:
    return float(read_meta(root).get("fps", VOCASET_FPS))


def _read_raw(root: Path) -> VocaIndex:
    missing = [n for n in RAW_FILES if not (root / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{root} is missing {', '.join(missing)}; expected the {RAW_LAYOUT}")
    templates = _load_templates(root / "templates.pkl", RAW_LAYOUT)
    num_vertices = next(iter(templates.values())).shape[0]
    verts_path = root / "data_verts.npy"
    header = np.load(verts_path, mmap_mode="r")
    if header.ndim == 2 and header.shape[1] == 3 * num_vertices:
        source = NpyFile(verts_path, (header.shape[0], num_vertices, 3))
    elif header.ndim == 3 and header.shape[1:] == (num_vertices, 3):
        source = NpyFile(verts_path)
    else:
        raise ValueError(f"{verts_path} must have shape (N, {num_vertices}, 3) to match templates.pkl, got {header.shape}")
    num_rows = header.shape[0]
    index, audio = load_pickle(root / "subj_seq_to_idx.pkl"), load_pickle(root / "raw_audio_fixed.pkl")
    fps, sequences = _fps(root), []
    for subject in sorted(index):
        if subject not in templates:
            raise ValueError(f"subj_seq_to_idx.pkl lists subject {subject!r} that templates.pkl lacks")
        for sentence in sorted(index[subject]):
            frames = index[subject][sentence]
            rows = np.array([frames[k] for k in sorted(frames)], dtype=np.int64)
            if len(rows) == 0 or rows.min() < 0 or rows.max() >= num_rows:
                raise ValueError(f"subj_seq_to_idx.pkl rows of {subject}_{sentence} must lie in [0, {num_rows}) "
                                 f"(the rows of data_verts.npy), got {len(rows)} rows")
            clip = audio.get(subject, {}).get(sentence)
            sequences.append(VocaSequence(
                subject=str(subject), sentence=str(sentence), source=source, rows=rows,
                template=templates[subject], fps=fps,
                audio_data=None if clip is None else np.asarray(clip["audio"]),
                sample_rate=None if clip is None else int(clip["sample_rate"]),
            ))
    return VocaIndex(root=root, layout="raw", fps=fps, templates=templates, sequences=tuple(sequences))


def _read_faceformer(root: Path) -> VocaIndex:
    templates = _load_templates(root / "templates.pkl", FACEFORMER_LAYOUT)
    num_vertices = next(iter(templates.values())).shape[0]
    vdir = root / "vertices_npy"
    if not vdir.is_dir():
        raise FileNotFoundError(f"missing {vdir}; expected the {FACEFORMER_LAYOUT}")
    fps, sequences = _fps(root), []
    for path in sorted(vdir.glob("*.npy")):
        subject, _, sentence = path.stem.rpartition("_")
        if not subject:
            raise ValueError(f"{path.name} does not follow <subject>_<sentence>.npy")
        if subject not in templates:
            raise ValueError(f"templates.pkl has no template for subject {subject!r} (from {path})")
        shape = np.load(path, mmap_mode="r").shape
        if len(shape) == 3 and shape[1:] == (num_vertices, 3):
            shape = shape[:1] + (num_vertices * 3,)
        if len(shape) != 2 or shape[1] != 3 * num_vertices or shape[0] == 0:
            raise ValueError(f"{path} must have shape (T, {3 * num_vertices}) (V={num_vertices} from templates.pkl), got {shape}")
        wav = root / "wav" / f"{path.stem}.wav"
        sequences.append(VocaSequence(
            subject=subject, sentence=sentence, source=NpyFile(path, (shape[0], num_vertices, 3)),
            rows=np.arange(shape[0], dtype=np.int64), template=templates[subject], fps=fps,
            audio_path=wav if wav.is_file() else None,
        ))
    if not sequences:
        raise FileNotFoundError(f"{vdir} holds no .npy sequences; expected the {FACEFORMER_LAYOUT}")
    return VocaIndex(root=root, layout="faceformer", fps=fps, templates=templates, sequences=tuple(sequences))
