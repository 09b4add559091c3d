"""Perceptual studies (paper sec. 4.4, tables 3-5): balanced design, rating storage, analysis.

Design (read from the paper): every clip gets its own 5-point Likert score per aspect (the
tables report a MOS per method), clips of one stimulus are shown side by side, stimuli and
positions are randomized per participant, and every stimulus is seen under every method. The
comparison "ours vs X" is a one-sided paired t-test over (participant, stimulus) pairs of scores.
Three layouts of a trial (one screen):

* "panel" (the paper's): one stimulus, all methods side by side in a Latin-square order;
* "pairs": one stimulus, ours and one other method, left/right counterbalanced (ours is rated
  once per comparison, and the pair for "ours vs X" comes from that screen);
* "single": one clip per screen.

This module is the design: the manifest (`Study`) and its balanced trials. The ratings are stored by
`study_store.RatingStore` (the SQLite file the rating app writes) and analysed by `study_analysis`.
The scripts are in eval/study/.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

SCHEMA = "blendtalk.study/1"
METHODS = ("ours", "interpolation", "no_sparsity", "no_laplacian", "no_geometric_map", "speech_only")
REFERENCE = "ours"
METHOD_LABELS = {  # the paper's names (table 5) where it has one
    "ours": "Ours", "interpolation": "Interpolation of Inputs", "no_sparsity": "w/o L_sparse",
    "no_laplacian": "w/o L_lap", "no_geometric_map": "w/o Geometric Mapping", "speech_only": "Speech only",
}
ASPECTS = ("lip_sync", "expression")
ASPECT_LABELS = {"lip_sync": "Lip-Sync", "expression": "Expression"}
ASPECT_QUESTIONS = {
    "lip_sync": "How well do the lip movements match the speech?",
    "expression": "How well does the face express the target emotion?",
}
LAYOUTS = ("panel", "pairs", "single")
LIKERT_MIN, LIKERT_MAX = 1, 5  # the paper's 5-point scale
LIKERT_LABELS = ("bad", "poor", "fair", "good", "excellent")  # ITU-T P.800 ACR wording
ALPHA = 0.05  # one-sided significance level
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # participant, stimulus, clip, trial ids


class StudyError(ValueError):
    """Bad study input; `status` is the HTTP status the rating app answers with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class IncompleteDataError(StudyError):
    """Ratings do not cover the design exactly (missing, duplicate or foreign answers)."""


def check_id(value, what: str) -> str:
    if not isinstance(value, str) or not ID_RE.fullmatch(value):
        raise StudyError(f"{what} must be 1-64 letters, digits, '_' or '-' (starting with a letter or "
                         f"digit), got {value!r}")
    return value


# ---------------------------------------------------------------------------------------- manifest

@dataclass(frozen=True)
class Stimulus:
    """One audio clip with its target emotion. audio: path (relative to the manifest's folder)."""

    id: str
    audio: str
    emotion: str
    reference: str | None = None  # optional exemplar video of the emotion, shown to raters


@dataclass(frozen=True)
class Clip:
    """One rendered video: `stimulus` under `method`; the id is opaque so raters stay blind."""

    id: str
    stimulus: str
    method: str
    path: str


@dataclass(frozen=True)
class Trial:
    """One screen: `clips` in display order (index 0 = leftmost)."""

    id: str
    stimulus: str
    clips: tuple[str, ...]


@dataclass(frozen=True)
class Participant:
    id: str
    trials: tuple[Trial, ...]


@dataclass
class Study:
    """The manifest: what is rendered, who sees what in which order and position."""

    name: str
    seed: int
    layout: str
    reference: str
    methods: tuple[str, ...]
    aspects: tuple[str, ...]
    stimuli: tuple[Stimulus, ...]
    clips: tuple[Clip, ...]
    participants: tuple[Participant, ...]
    method_info: dict[str, dict] = field(default_factory=dict)  # name -> {"label", "training_set"}

    def __post_init__(self):
        self.methods, self.aspects = tuple(self.methods), tuple(self.aspects)
        self.stimuli, self.clips = tuple(self.stimuli), tuple(self.clips)
        self.participants = tuple(self.participants)
        if self.layout not in LAYOUTS:
            raise StudyError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        for m in self.methods:
            check_id(m, "method name")
        for a in self.aspects:
            check_id(a, "aspect name")
        if self.reference not in self.methods or len(self.methods) < 2:
            raise StudyError(f"reference {self.reference!r} must be one of at least two methods {self.methods}")
        for what, items in (("method", self.methods), ("aspect", self.aspects),
                            ("stimulus", [s.id for s in self.stimuli]), ("clip", [c.id for c in self.clips]),
                            ("participant", [p.id for p in self.participants])):
            dup = [k for k, n in Counter(items).items() if n > 1]
            if dup:
                raise StudyError(f"duplicate {what} ids: {dup[:5]}")
            if what in ("stimulus", "clip", "participant"):
                for k in items:
                    check_id(k, f"{what} id")
        if not self.stimuli or not self.participants or not self.aspects:
            raise StudyError("a study needs at least one stimulus, participant and aspect")
        self.stimulus_by_id = {s.id: s for s in self.stimuli}
        self.clip_by_id = {c.id: c for c in self.clips}
        self.participant_by_id = {p.id: p for p in self.participants}
        cells = Counter((c.stimulus, c.method) for c in self.clips)
        for c in self.clips:
            if c.stimulus not in self.stimulus_by_id or c.method not in self.methods:
                raise StudyError(f"clip {c.id} names an unknown stimulus or method ({c.stimulus}, {c.method})")
        missing = [(s.id, m) for s in self.stimuli for m in self.methods if cells[(s.id, m)] != 1]
        if missing:
            raise StudyError(f"every stimulus needs exactly one clip per method; not so for {missing[:5]}")
        for p in self.participants:
            if len({t.id for t in p.trials}) != len(p.trials):
                raise StudyError(f"participant {p.id} has duplicate trial ids")
            for t in p.trials:
                check_id(t.id, "trial id")
                if not t.clips or len(set(t.clips)) != len(t.clips) or any(
                        self.clip_by_id.get(c, Clip("", "", "", "")).stimulus != t.stimulus for c in t.clips):
                    raise StudyError(f"trial {t.id} of {p.id}: clips {t.clips} must be distinct clips of {t.stimulus}")

    def label(self, method: str) -> str:
        return self.method_info.get(method, {}).get("label") or METHOD_LABELS.get(method, method)

    def training_set(self, method: str) -> str:
        return self.method_info.get(method, {}).get("training_set", "")

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "name": self.name, "seed": self.seed, "layout": self.layout,
                "reference": self.reference, "methods": list(self.methods), "aspects": list(self.aspects),
                "method_info": self.method_info, "scale": {"min": LIKERT_MIN, "max": LIKERT_MAX,
                                                           "labels": list(LIKERT_LABELS)},
                "stimuli": [asdict(s) for s in self.stimuli], "clips": [asdict(c) for c in self.clips],
                "participants": [{"id": p.id, "trials": [{"id": t.id, "stimulus": t.stimulus, "clips": list(t.clips)}
                                                         for t in p.trials]} for p in self.participants]}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Study":
        if d.get("schema") != SCHEMA:
            raise StudyError(f"not a study manifest: schema is {d.get('schema')!r}, expected {SCHEMA!r}")
        try:
            return cls(name=d["name"], seed=int(d["seed"]), layout=d["layout"], reference=d["reference"],
                       methods=d["methods"], aspects=d["aspects"], method_info=dict(d.get("method_info", {})),
                       stimuli=[Stimulus(**s) for s in d["stimuli"]], clips=[Clip(**c) for c in d["clips"]],
                       participants=[Participant(p["id"], tuple(Trial(t["id"], t["stimulus"], tuple(t["clips"]))
                                                                for t in p["trials"])) for p in d["participants"]])
        except (KeyError, TypeError) as e:
            raise StudyError(f"malformed study manifest: {e!r}") from e

    def fingerprint(self) -> str:
        """sha256 of the canonical manifest: ties a ratings database to its design."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Study":
        return cls.from_dict(json.loads(Path(path).read_text()))


def make_stimuli(audio: Sequence[str | Path], emotions: Sequence[str], cross: bool = False) -> list[Stimulus]:
    """Stimuli from audio files and emotions: zipped (equal lengths, or one emotion for all) or,
    with `cross`, every audio under every emotion. Ids s00, s01, ... in that order."""
    from ..expression.emotions import check_emotion

    emotions = [check_emotion(e) for e in emotions]
    if not audio or not emotions:
        raise StudyError("need at least one audio file and one emotion")
    if cross:
        pairs = [(a, e) for a in audio for e in emotions]
    elif len(emotions) in (1, len(audio)):
        pairs = list(zip(audio, emotions * len(audio) if len(emotions) == 1 else emotions))
    else:
        raise StudyError(f"{len(audio)} audio files and {len(emotions)} emotions: give one emotion per audio "
                         f"file, a single emotion for all, or cross them")
    return [Stimulus(f"s{i:02d}", str(a), e) for i, (a, e) in enumerate(pairs)]


def build_study(stimuli: Sequence[Stimulus], n_participants: int, methods: Sequence[str] = METHODS,
                layout: str = "panel", reference: str = REFERENCE, aspects: Sequence[str] = ASPECTS,
                seed: int = 0, participant_ids: Sequence[str] | None = None, clip_dir: str = "clips",
                name: str = "study", method_info: dict | None = None, clip_suffix: str = ".mp4") -> Study:
    """A balanced design (deterministic in `seed`).

    Every participant sees every stimulus under every method exactly once (layout "pairs": every
    other method once, each beside ours). Positions follow a cyclic Latin square over participant
    and stimulus (panel) or alternate (pairs, ours left in half the screens), so every method is
    equally often in every position when n_participants is a multiple of the number of positions
    (panel: len(methods), pairs: 2). Screen order is shuffled independently per participant.
    """
    methods = tuple(methods)
    if layout not in LAYOUTS or reference not in methods or len(set(methods)) != len(methods) or len(methods) < 2:
        raise StudyError(f"need a layout in {LAYOUTS} (got {layout!r}) and at least two distinct methods "
                         f"including the reference {reference!r} (got {methods})")
    if n_participants < 1:
        raise StudyError(f"n_participants must be >= 1, got {n_participants}")
    ids = list(participant_ids) if participant_ids is not None else [f"P{i + 1:02d}" for i in range(n_participants)]
    if len(ids) != n_participants:
        raise StudyError(f"{len(ids)} participant ids for {n_participants} participants")
    rng = np.random.default_rng(seed)
    hexes: list[str] = []
    while len(hexes) < len(stimuli) * len(methods):  # opaque clip ids: the URL must not name the method
        h = f"c{int(rng.integers(16 ** 8)):08x}"
        hexes += [h] if h not in hexes else []
    clips, cell = [], {}
    for s in stimuli:
        for m in methods:
            c = Clip(hexes[len(clips)], s.id, m, f"{clip_dir}/{s.id}_{m}{clip_suffix}")
            clips.append(c)
            cell[(s.id, m)] = c.id
    base = [methods[i] for i in rng.permutation(len(methods))]  # study-wide column order of the square
    others = [m for m in methods if m != reference]
    flip = int(rng.integers(2))
    participants = []
    for p, pid in enumerate(ids):
        screens = []
        for s_index, s in enumerate(stimuli):
            if layout == "panel":
                shift = (p + s_index) % len(methods)
                screens.append((s.id, tuple(cell[(s.id, base[(k + shift) % len(methods)])] for k in range(len(methods)))))
            elif layout == "pairs":
                for j, m in enumerate(others):
                    pair = (cell[(s.id, reference)], cell[(s.id, m)])
                    screens.append((s.id, pair if (p + s_index + j + flip) % 2 == 0 else pair[::-1]))
            elif layout == "single":
                screens += [(s.id, (cell[(s.id, m)],)) for m in methods]
            else:
                raise StudyError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        order = np.random.default_rng([seed, p]).permutation(len(screens))
        participants.append(Participant(pid, tuple(Trial(f"t{k:03d}", *screens[i]) for k, i in enumerate(order))))
    return Study(name, seed, layout, reference, methods, tuple(aspects), tuple(stimuli), tuple(clips),
                 tuple(participants), dict(method_info or {}))


def appearance_counts(study: Study) -> Counter:
    """(participant, stimulus, method) -> how many screens show it."""
    return Counter((p.id, t.stimulus, study.clip_by_id[c].method) for p in study.participants
                   for t in p.trials for c in t.clips)


def position_counts(study: Study) -> dict[str, list[int]]:
    """method -> number of screens showing it at each position (0 = left)."""
    width = max(len(t.clips) for p in study.participants for t in p.trials)
    counts = {m: [0] * width for m in study.methods}
    for p in study.participants:
        for t in p.trials:
            for k, c in enumerate(t.clips):
                counts[study.clip_by_id[c].method][k] += 1
    return counts
