"""PyTorch datasets of per-vertex displacements d = vertices - subject template, split by subject.

SpeechDataset reads VOCASET-format corpora (blendtalk.data.vocaset) with their audio: whole
sequences for FaceFormer, windows, or single frames for the deformation fusion module (DFM).
ExpressionDataset reads Florence4D-format corpora (blendtalk.data.florence). Real data (FLAME,
V=5023) and the synthetic corpora on the face rig (V=4278) read the same way; V comes from the data.

Frames are gathered from memory maps with one fancy index per backing file and batch
(`__getitems__`, which torch's DataLoader calls with a whole batch of indices), so a batch of 128
frames costs one sorted read, not 128 Python-level loads. `PairedFrameLoader` yields the
(speech frame, expression frame) batches that DFM training consumes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from types import MappingProxyType
from math import gcd
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..constants import FPS, SAMPLE_RATE

SUBSETS = ("train", "val", "test")

# FaceFormer / VOCA speaker split (EvelynFan/FaceFormer main.py defaults, TimoBolkart/voca
# config_parser.py); the train order is also the order of FaceFormer's speaker one-hot vector.
VOCASET_TRAIN_SUBJECTS = (
    "FaceTalk_170728_03272_TA", "FaceTalk_170904_00128_TA", "FaceTalk_170725_00137_TA", "FaceTalk_170915_00223_TA",
    "FaceTalk_170811_03274_TA", "FaceTalk_170913_03279_TA", "FaceTalk_170904_03276_TA", "FaceTalk_170912_03278_TA",
)
VOCASET_VAL_SUBJECTS = ("FaceTalk_170811_03275_TA", "FaceTalk_170908_03277_TA")
VOCASET_TEST_SUBJECTS = ("FaceTalk_170809_00138_TA", "FaceTalk_170731_00024_TA")
VOCASET_SENTENCES = {"train": (1, 40), "val": (21, 40), "test": (21, 40)}  # inclusive sentence numbers


@dataclass(frozen=True)
class Split:
    """Which subjects (and, optionally, which numbered sentences) form each subset.

    train/val/test: disjoint subject names; sentences: subset -> inclusive (first, last) sentence
    number, or None to keep every sequence of the subset's subjects.
    """

    train: tuple[str, ...]
    val: tuple[str, ...] = ()
    test: tuple[str, ...] = ()
    sentences: Mapping[str, tuple[int, int]] | None = None

    def __post_init__(self):
        for name in SUBSETS:
            object.__setattr__(self, name, tuple(getattr(self, name)))
        seen: dict[str, str] = {}
        for name in SUBSETS:
            for subject in getattr(self, name):
                if subject in seen:
                    raise ValueError(f"subject {subject!r} is in both the {seen[subject]} and {name} subsets")
                seen[subject] = name
        if self.sentences is not None:
            if not set(self.sentences) <= set(SUBSETS):
                raise ValueError(f"sentence ranges must be keyed by {SUBSETS}, got {sorted(self.sentences)}")
            ranges = {k: (int(a), int(b)) for k, (a, b) in self.sentences.items()}
            object.__setattr__(self, "sentences", MappingProxyType(ranges))  # read-only: splits are shared constants

    def subjects(self, subset: str) -> tuple[str, ...]:
        if subset not in SUBSETS:
            raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
        return getattr(self, subset)

    def selects(self, subset: str, subject: str, sentence_number: int | None) -> bool:
        """Whether a sequence of `subject` with this sentence number belongs to `subset`."""
        if subject not in self.subjects(subset):
            return False
        if self.sentences is None or subset not in self.sentences:
            return True
        if sentence_number is None:
            raise ValueError(f"split filters {subset} by sentence number but a sequence of {subject} has none")
        first, last = self.sentences[subset]
        return first <= sentence_number <= last

    @classmethod
    def by_fraction(cls, subjects: Iterable[str], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> "Split":
        """Deterministic split of the sorted unique subject names into consecutive train/val/test blocks.

        Each non-zero fraction gets at least one subject when there are enough of them.
        """
        names = sorted(set(subjects))
        if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
            raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
        n = len(names)
        n_val = max(1, round(fractions[1] * n)) if fractions[1] > 0 and n >= 3 else 0
        n_test = max(1, round(fractions[2] * n)) if fractions[2] > 0 and n >= 3 else 0
        n_train = n - n_val - n_test
        if n_train < 1:
            raise ValueError(f"cannot split {n} subjects with fractions {fractions}: no subject left for training")
        return cls(names[:n_train], names[n_train : n_train + n_val], names[n_train + n_val :])


VOCASET_SPLIT = Split(VOCASET_TRAIN_SUBJECTS, VOCASET_VAL_SUBJECTS, VOCASET_TEST_SUBJECTS, VOCASET_SENTENCES)


def _region_index(region: Any, num_vertices: int) -> np.ndarray | None:
    if region is None:
        return None
    r = np.asarray(region)
    if r.dtype == bool:
        if r.shape != (num_vertices,):
            raise ValueError(f"a boolean region mask must have shape ({num_vertices},), got {r.shape}")
        return np.flatnonzero(r)
    if r.ndim != 1 or not np.issubdtype(r.dtype, np.integer) or len(r) == 0 or r.min() < 0 or r.max() >= num_vertices:
        raise ValueError(f"region must be a (V,) bool mask or a non-empty 1-D index array below V={num_vertices}")
    return r.astype(np.int64)


class _DisplacementDataset(Dataset):
    """Shared machinery: subset selection, frame-rate stride, region crop, windows, batched gathers."""

    def __init__(self, sequences: Iterable, split: Split, subset: str, window: int | None, hop: int | None,
                 fps: float | None, region: Any, first_frame_template: bool = False):
        if window is not None and window < 1:
            raise ValueError(f"window must be None (whole sequences) or >= 1 frames, got {window}")
        all_seqs = list(sequences)
        seqs = [s for s in all_seqs if split.selects(subset, s.subject, s.sentence_number)]
        if not seqs:
            raise ValueError(f"the split selects no {subset} sequences: its {subset} subjects are "
                             f"{list(split.subjects(subset))}, the data has {sorted({s.subject for s in all_seqs})}")
        self.split, self.subset, self.window = split, subset, window
        self.hop = hop or window or 1
        self.sequences = seqs
        strides, templates = [], []
        for s in seqs:
            strides.append(self._stride(s, fps))
            t = s.vertices[0] if first_frame_template else s.template
            if t is None:
                raise ValueError(f"sequence {s.name} has no subject template; write <root>/{s.subject}.obj or "
                                 "pass first_frame_template=True (sequences that start neutral)")
            templates.append(np.asarray(t, dtype=np.float32))
        self.num_source_vertices = templates[0].shape[0]
        for s, t in zip(seqs, templates):
            if t.shape[0] != self.num_source_vertices or getattr(s, "num_vertices", t.shape[0]) != t.shape[0]:
                raise ValueError(f"sequence {s.name} has {getattr(s, 'num_vertices', t.shape[0])} vertices and a "
                                 f"{t.shape[0]}-vertex template; all must match V={self.num_source_vertices}")
        self.fps = None if fps is None else float(fps)
        self.region = _region_index(region, self.num_source_vertices)
        crop = (lambda t: t) if self.region is None else (lambda t: t[self.region])
        self.templates = np.stack([crop(t) for t in templates])  # (S, V', 3)
        # Backing arrays, shared between sequences of one file (the raw VOCASET layout has one).
        src_ids: dict[int, int] = {}
        self._sources = []
        for s in seqs:
            if id(s.source) not in src_ids:
                src_ids[id(s.source)] = len(self._sources)
                self._sources.append(s.source)
        self._seq_source = np.array([src_ids[id(s.source)] for s in seqs], dtype=np.int64)
        rows = [np.asarray(s.rows)[::k] for s, k in zip(seqs, strides)]
        self._seq_len = np.array([len(r) for r in rows], dtype=np.int64)
        self._seq_offset = np.concatenate([[0], np.cumsum(self._seq_len)[:-1]]).astype(np.int64)
        self._rows = np.concatenate(rows)
        self.seq_fps = np.array([s.fps / k for s, k in zip(seqs, strides)])
        train = {name: i for i, name in enumerate(split.train)}
        self.subject_index = np.array([train.get(s.subject, -1) for s in seqs], dtype=np.int64)
        if window is None:
            self._item_seq, self._item_start = np.arange(len(seqs)), np.zeros(len(seqs), dtype=np.int64)
        else:
            counts = np.maximum(0, (self._seq_len - window) // self.hop + 1)
            if counts.sum() == 0:
                raise ValueError(f"no {subset} sequence has {window} frames; the longest has {self._seq_len.max()}")
            self._item_seq = np.repeat(np.arange(len(seqs)), counts)
            first = np.repeat(np.cumsum(counts) - counts, counts)
            self._item_start = (np.arange(counts.sum()) - first) * self.hop

    @staticmethod
    def _stride(seq, fps: float | None) -> int:
        if fps is None:
            return 1
        ratio = seq.fps / fps
        stride = int(round(ratio))
        if stride < 1 or abs(ratio - stride) > 1e-6:
            raise ValueError(f"sequence {seq.name} at {seq.fps} fps cannot be subsampled to {fps} fps by an "
                             "integer stride; pass fps=None or a divisor of the source rate")
        return stride

    @property
    def num_vertices(self) -> int:
        """V' of the returned displacements (after the region crop)."""
        return self.templates.shape[1]

    @property
    def num_frames(self) -> int:
        return len(self._rows)

    def __len__(self) -> int:
        return len(self._item_seq)

    def _read(self, seq: np.ndarray, frame: np.ndarray) -> np.ndarray:
        """Displacements (n, V', 3) of frame `frame[i]` (after stride) of sequence `seq[i]`."""
        rows = self._rows[self._seq_offset[seq] + frame]
        src = self._seq_source[seq]
        out = np.empty((len(rows), self.num_source_vertices if self.region is None else len(self.region), 3),
                       dtype=np.float32)
        for s in np.unique(src):  # one sorted fancy read per backing file
            sel = np.flatnonzero(src == s)
            uniq, inverse = np.unique(rows[sel], return_inverse=True)
            block = np.asarray(self._sources[s].array[uniq], dtype=np.float32)  # (U, V, 3)
            if self.region is not None:
                block = block[:, self.region]
            out[sel] = block[inverse]
        out -= self.templates[seq]
        return out

    def displacements(self, items: Sequence[int] | np.ndarray) -> np.ndarray:
        """(B, W, V', 3) float32 displacements of windowed items (window must be set)."""
        if self.window is None:
            raise ValueError("displacements() needs a fixed window; this dataset yields whole sequences")
        items = np.asarray(items, dtype=np.int64)
        seq = np.repeat(self._item_seq[items], self.window)
        frame = (self._item_start[items][:, None] + np.arange(self.window)).reshape(-1)
        return self._read(seq, frame).reshape(len(items), self.window, -1, 3)

    def _base_item(self, i: int) -> dict[str, Any]:
        s = self._item_seq[i]
        if self.window is None:
            d = self._read(np.full(self._seq_len[s], s), np.arange(self._seq_len[s]))
        else:
            d = self.displacements([i])[0]
            d = d[0] if self.window == 1 else d
        seq = self.sequences[s]
        return {"displacement": torch.from_numpy(d), "template": torch.from_numpy(self.templates[s]),
                "subject": seq.subject, "subject_index": int(self.subject_index[s]), "name": seq.name,
                "start": int(self._item_start[i])}

    def _base_batch(self, items: np.ndarray) -> dict[str, Any]:
        d = self.displacements(items)
        seqs = self._item_seq[items]
        return {"displacement": torch.from_numpy(d[:, 0] if self.window == 1 else d),
                "template": torch.from_numpy(self.templates[seqs]),
                "subject": [self.sequences[s].subject for s in seqs],
                "subject_index": torch.from_numpy(self.subject_index[seqs]),
                "name": [self.sequences[s].name for s in seqs],
                "start": torch.from_numpy(self._item_start[items])}

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        return self._item(int(i) % len(self))

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any] | list[dict[str, Any]]:
        """A whole batch in one gather (torch's DataLoader calls this); whole sequences stay a list."""
        if self.window is None:
            return [self[i] for i in indices]
        return self._batch(np.asarray(indices, dtype=np.int64) % len(self))

    def _item(self, i: int) -> dict[str, Any]:
        return self._base_item(i)

    def _batch(self, items: np.ndarray) -> dict[str, Any]:
        return self._base_batch(items)


class SpeechDataset(_DisplacementDataset):
    """Speech displacements with audio from a VOCASET-format index (`read_vocaset`).

    window=None yields whole sequences (FaceFormer), window=W yields (W, V', 3) windows every `hop`
    frames, window=1 yields single frames (V', 3) for the DFM. fps: target motion rate, reached by an
    integer stride (VOCASET 60 -> 30 like FaceFormer's [::2]). region: (V,) bool mask or indices to
    crop to. Items: displacement, template (V', 3), subject, subject_index (position in split.train,
    -1 for others: FaceFormer's speaker one-hot), name, start frame, and with_audio: audio (S,)
    float32 at `sample_rate` covering the same frames.
    """

    def __init__(self, index: Iterable, split: Split, subset: str = "train", window: int | None = None,
                 hop: int | None = None, fps: float | None = FPS, region: Any = None,
                 sample_rate: int = SAMPLE_RATE, with_audio: bool = True):
        seqs = list(index)
        if with_audio:
            silent = [s.name for s in seqs if not s.has_audio]
            if silent and len(silent) == len(seqs):
                raise ValueError("no sequence has audio; pass with_audio=False to read motion only")
            if silent:
                warnings.warn(f"skipping {len(silent)} sequences without audio, e.g. {silent[:3]}", stacklevel=2)
            seqs = [s for s in seqs if s.has_audio]
        super().__init__(seqs, split, subset, window, hop, fps, region)
        if with_audio and len(set(self.seq_fps)) > 1:
            raise ValueError(f"sequences have different frame rates {sorted(set(self.seq_fps))}; pass fps to align them")
        self.sample_rate, self.with_audio = int(sample_rate), with_audio
        self._audio_cache: dict[int, np.ndarray] = {}

    def audio(self, s: int) -> np.ndarray:
        """(S,) float32 audio of selected sequence `s`, resampled to self.sample_rate (cached)."""
        if s not in self._audio_cache:
            samples, sr = self.sequences[s].load_audio()
            if sr != self.sample_rate:
                from scipy.signal import resample_poly

                g = gcd(sr, self.sample_rate)
                samples = resample_poly(samples, self.sample_rate // g, sr // g).astype(np.float32)
            self._audio_cache[s] = samples
        return self._audio_cache[s]

    def _audio_window(self, s: int, start: int) -> np.ndarray:
        audio = self.audio(s)
        if self.window is None:
            return audio
        per_frame = self.sample_rate / self.seq_fps[s]
        a0, n = int(round(start * per_frame)), int(round(self.window * per_frame))
        out = np.zeros(n, dtype=np.float32)
        chunk = audio[a0 : a0 + n]
        out[: len(chunk)] = chunk
        return out

    def _item(self, i: int) -> dict[str, Any]:
        item = self._base_item(i)
        if self.with_audio:
            item["audio"] = torch.from_numpy(self._audio_window(int(self._item_seq[i]), item["start"]))
        return item

    def _batch(self, items: np.ndarray) -> dict[str, Any]:
        batch = self._base_batch(items)
        if self.with_audio:
            batch["audio"] = torch.from_numpy(np.stack(
                [self._audio_window(int(self._item_seq[i]), int(self._item_start[i])) for i in items]))
        return batch


class ExpressionDataset(_DisplacementDataset):
    """Expression displacements from a Florence4D-format index (`read_florence`).

    window=1 (default) yields single frames (V', 3) for the DFM; window=W windows, None whole
    sequences. Items add expression and expression_index (position in the sorted expression names
    of the whole index). first_frame_template: use each sequence's first frame as its neutral when
    the corpus ships no subject templates (sequences that start neutral).
    """

    def __init__(self, index: Iterable, split: Split, subset: str = "train", window: int | None = 1,
                 hop: int | None = None, fps: float | None = None, region: Any = None,
                 first_frame_template: bool = False):
        seqs = list(index)
        super().__init__(seqs, split, subset, window, hop, fps, region, first_frame_template)
        self.expressions = tuple(sorted({s.expression for s in seqs}))
        lookup = {e: k for k, e in enumerate(self.expressions)}
        self.expression_index = np.array([lookup[s.expression] for s in self.sequences], dtype=np.int64)

    def _item(self, i: int) -> dict[str, Any]:
        item = self._base_item(i)
        s = int(self._item_seq[i])
        item.update(expression=self.sequences[s].expression, expression_index=int(self.expression_index[s]))
        return item

    def _batch(self, items: np.ndarray) -> dict[str, Any]:
        batch = self._base_batch(items)
        seqs = self._item_seq[items]
        batch.update(expression=[self.sequences[s].expression for s in seqs],
                     expression_index=torch.from_numpy(self.expression_index[seqs]))
        return batch


_LENGTH_KEYS = {"displacement": "num_frames", "audio": "num_samples"}


def collate(batch: dict[str, Any] | list[dict[str, Any]]) -> dict[str, Any]:
    """DataLoader collate_fn: passes through batches built by __getitems__, stacks lists of items.

    displacement and audio (and any tensors of unequal length) are zero-padded along their first
    axis, with their lengths as num_frames / num_samples (B,).
    """
    if isinstance(batch, dict):
        return batch
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [b[key] for b in batch]
        if isinstance(values[0], torch.Tensor):
            if key in _LENGTH_KEYS or any(v.shape != values[0].shape for v in values):
                out[key] = torch.nn.utils.rnn.pad_sequence(values, batch_first=True)
                out[_LENGTH_KEYS.get(key, f"{key}_length")] = torch.tensor([len(v) for v in values])
            else:
                out[key] = torch.stack(values)
        elif isinstance(values[0], (int, np.integer)):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out


__all__ = ["SUBSETS", "VOCASET_SPLIT", "VOCASET_TRAIN_SUBJECTS", "VOCASET_VAL_SUBJECTS", "VOCASET_TEST_SUBJECTS",
           "VOCASET_SENTENCES", "ExpressionDataset", "SpeechDataset", "Split", "collate"]
