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

Everything here is pure logic on a `Study` (the manifest) and rating rows; `RatingStore` is the
SQLite file the rating app writes. The scripts are in eval/study/.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

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


# ----------------------------------------------------------------------------------------- storage

EXPORT_FIELDS = ("participant", "trial", "trial_index", "stimulus", "emotion", "method", "clip", "position",
                 "aspect", "score", "submitted", "updated")


class RatingStore:
    """The ratings of one study in SQLite, written as they are given.

    A rating is saved (as a draft of the current screen) the moment it is posted, so a closed
    browser tab loses nothing; `submit` locks the screen and moves the participant on. Only the
    participant's current screen can be rated. Thread-safe (one connection behind a lock).
    """

    def __init__(self, path: str | Path, study: Study):
        self.study = study
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False)
        with self._lock, self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS ratings (participant TEXT NOT NULL, trial TEXT NOT NULL, "
                "clip TEXT NOT NULL, aspect TEXT NOT NULL, "
                f"score INTEGER NOT NULL CHECK (score BETWEEN {LIKERT_MIN} AND {LIKERT_MAX}), "
                "updated TEXT NOT NULL, PRIMARY KEY (participant, trial, clip, aspect))")
            self._db.execute("CREATE TABLE IF NOT EXISTS submitted (participant TEXT NOT NULL, trial TEXT NOT NULL, "
                             "at TEXT NOT NULL, PRIMARY KEY (participant, trial))")
            row = self._db.execute("SELECT value FROM meta WHERE key = 'fingerprint'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('fingerprint', ?), ('name', ?)",
                                 (study.fingerprint(), study.name))
            elif row[0] != study.fingerprint():
                raise StudyError(f"{path} holds ratings of another manifest (fingerprint differs); use a new "
                                 f"database for a changed design")

    def close(self) -> None:
        self._db.close()

    def participant(self, participant) -> Participant:
        check_id(participant, "participant id")
        if participant not in self.study.participant_by_id:
            raise StudyError(f"unknown participant id {participant!r}", status=404)
        return self.study.participant_by_id[participant]

    def _submitted(self, pid: str) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT trial FROM submitted WHERE participant = ?", (pid,))}

    def current_trial(self, participant: str) -> Trial | None:
        """The first screen not yet submitted, None when all are."""
        p = self.participant(participant)
        with self._lock:
            done = self._submitted(p.id)
        return next((t for t in p.trials if t.id not in done), None)

    def progress(self, participant: str) -> tuple[int, int]:
        """(screens submitted, screens in total)."""
        p = self.participant(participant)
        with self._lock:
            return len(self._submitted(p.id)), len(p.trials)

    def draft(self, participant: str, trial: str) -> dict[str, dict[str, int]]:
        """clip -> aspect -> score already given on one screen."""
        out: dict[str, dict[str, int]] = defaultdict(dict)
        with self._lock:
            for clip, aspect, score in self._db.execute(
                    "SELECT clip, aspect, score FROM ratings WHERE participant = ? AND trial = ?", (participant, trial)):
                out[clip][aspect] = score
        return dict(out)

    def rate(self, participant: str, trial: str, ratings: Sequence[Mapping], submit: bool = False) -> Trial | None:
        """Save ratings [{"clip", "aspect", "score"}] on the current screen; with `submit`, lock it
        (every clip must then have every aspect). Returns the participant's next current screen."""
        p = self.participant(participant)
        if not isinstance(ratings, (list, tuple)) or len(ratings) > max(len(t.clips) for t in p.trials) * len(
                self.study.aspects):
            raise StudyError("ratings must be a list of at most one {clip, aspect, score} per clip and aspect")
        if not isinstance(submit, bool):
            raise StudyError(f"submit must be true or false, got {submit!r}")
        with self._lock:  # check and write in one critical section: no answer slips into a submitted screen
            done = self._submitted(p.id)
            current = next((t for t in p.trials if t.id not in done), None)
            if current is None:
                raise StudyError("all screens of this participant are already submitted", status=409)
            if trial != current.id:
                raise StudyError(f"screen {trial!r} is not this participant's current screen; reload the page",
                                 status=409)
            clean = []
            for r in ratings:
                if not isinstance(r, Mapping) or set(r) != {"clip", "aspect", "score"}:
                    raise StudyError(f"each rating must be an object with clip, aspect and score, got {r!r}")
                if r["clip"] not in current.clips:
                    raise StudyError(f"clip {r['clip']!r} is not on the current screen")
                if r["aspect"] not in self.study.aspects:
                    raise StudyError(f"aspect must be one of {self.study.aspects}, got {r['aspect']!r}")
                s = r["score"]
                if type(s) is not int or not LIKERT_MIN <= s <= LIKERT_MAX:
                    raise StudyError(f"score must be an integer {LIKERT_MIN}..{LIKERT_MAX}, got {s!r}")
                clean.append((p.id, current.id, r["clip"], r["aspect"], s, _now()))
            with self._db:
                self._db.executemany("INSERT OR REPLACE INTO ratings VALUES (?, ?, ?, ?, ?, ?)", clean)
            if submit:
                have = set(self._db.execute("SELECT clip, aspect FROM ratings WHERE participant = ? AND trial = ?",
                                            (p.id, current.id)))
                need = [f"{chr(65 + k)}:{a}" for k, c in enumerate(current.clips) for a in self.study.aspects
                        if (c, a) not in have]
                if need:
                    raise StudyError(f"rate every video on every question before going on; missing {need}")
                with self._db:
                    self._db.execute("INSERT OR IGNORE INTO submitted VALUES (?, ?, ?)", (p.id, current.id, _now()))
        return self.current_trial(p.id)

    def rows(self) -> list[dict]:
        """Every stored rating with its design context (EXPORT_FIELDS), in presentation order."""
        with self._lock:
            scores = {tuple(r[:4]): (r[4], r[5]) for r in self._db.execute("SELECT * FROM ratings")}
            done = set(self._db.execute("SELECT participant, trial FROM submitted"))
        out = []
        for p in self.study.participants:
            for k, t in enumerate(p.trials):
                for pos, c in enumerate(t.clips):
                    for a in self.study.aspects:
                        if (p.id, t.id, c, a) in scores:
                            score, updated = scores[(p.id, t.id, c, a)]
                            out.append(dict(participant=p.id, trial=t.id, trial_index=k, stimulus=t.stimulus,
                                            emotion=self.study.stimulus_by_id[t.stimulus].emotion,
                                            method=self.study.clip_by_id[c].method, clip=c, position=pos, aspect=a,
                                            score=score, submitted=int((p.id, t.id) in done), updated=updated))
        return out

    def export_csv(self, path: str | Path) -> int:
        """Write rows() as CSV; returns the number of rows."""
        return write_rows_csv(self.rows(), path)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def write_rows_csv(rows: Sequence[Mapping], path: str | Path) -> int:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, EXPORT_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return len(rows)


def read_rows_csv(path: str | Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------- analysis

@dataclass(frozen=True)
class MethodScore:
    """MOS ± SD of one method on one aspect over n units (pairs or participants)."""

    aspect: str
    method: str
    mos: float
    sd: float
    n: int


@dataclass(frozen=True)
class Comparison:
    """One-sided paired t-test, H1: mean(reference - method) > 0, and Cohen's d_z of the differences."""

    aspect: str
    method: str
    reference: str
    n: int
    mean_diff: float
    t: float
    p: float
    p_holm: float  # Holm-adjusted over the comparisons of one aspect
    d: float


@dataclass
class StudyAnalysis:
    scores: list[MethodScore]
    comparisons: list[Comparison]
    unit: str  # "pair" (participant x stimulus, the paper's) or "participant" (means per participant)
    alpha: float
    n_ratings: int
    missing: list[str] = field(default_factory=list)  # empty unless allow_incomplete

    def score(self, aspect: str, method: str) -> MethodScore:
        return next(s for s in self.scores if s.aspect == aspect and s.method == method)

    def comparison(self, aspect: str, method: str) -> Comparison:
        return next(c for c in self.comparisons if c.aspect == aspect and c.method == method)


def collect_scores(study: Study, rows: Iterable[Mapping], allow_incomplete: bool = False
                   ) -> tuple[dict[tuple[str, str, str, str], int], list[str]]:
    """Submitted ratings keyed (participant, trial, clip, aspect), checked against the design,
    and the list of missing ones. Drafts (submitted = 0) are ignored. Raises IncompleteDataError
    on foreign or duplicate answers, and on missing ones unless `allow_incomplete`."""
    trials = {(p.id, t.id): t for p in study.participants for t in p.trials}
    scores: dict[tuple[str, str, str, str], int] = {}
    for i, r in enumerate(rows):
        if str(r.get("submitted", 1)) in ("0", "False", "false"):
            continue
        key = (r.get("participant"), r.get("trial"), r.get("clip"), r.get("aspect"))
        t = trials.get(key[:2])
        if t is None or key[2] not in t.clips or key[3] not in study.aspects:
            raise IncompleteDataError(f"row {i}: {key} is not part of this study's design (wrong manifest?)")
        clip = study.clip_by_id[key[2]]
        for name, want in (("method", clip.method), ("stimulus", clip.stimulus)):
            if r.get(name) not in (None, "", want):
                raise IncompleteDataError(f"row {i}: {name} {r[name]!r} disagrees with the manifest ({want!r})")
        try:
            score = int(str(r.get("score")))
        except ValueError:
            score = None
        if score is None or not LIKERT_MIN <= score <= LIKERT_MAX:
            raise IncompleteDataError(f"row {i}: score {r.get('score')!r} is not an integer {LIKERT_MIN}..{LIKERT_MAX}")
        if key in scores:
            raise IncompleteDataError(f"row {i}: duplicate answer for {key}; the data are not a balanced design")
        scores[key] = score
    expected = [(p.id, t.id, c, a) for p in study.participants for t in p.trials for c in t.clips for a in study.aspects]
    missing = [k for k in expected if k not in scores]
    lines = []
    if missing:
        by_p = Counter(k[0] for k in missing)
        per_p = {p.id: sum(len(t.clips) for t in p.trials) * len(study.aspects) for p in study.participants}
        lines = [f"{pid}: {n} of {per_p[pid]} ratings missing" for pid, n in by_p.items()]
        if not allow_incomplete:
            raise IncompleteDataError(
                f"{len(missing)} of {len(expected)} ratings are missing, so the design is not balanced:\n  "
                + "\n  ".join(lines) + "\nfinish the study, or pass --allow-incomplete to analyse the complete "
                "pairs only")
    return scores, lines


def paired_test(reference: np.ndarray, other: np.ndarray) -> tuple[float, float, float]:
    """(t, one-sided p for mean(reference - other) > 0, Cohen's d_z = mean(diff) / sd(diff)).
    (n,) each; nan where undefined (n < 2 or no variation in the differences)."""
    from scipy import stats

    diff = np.asarray(reference, float) - np.asarray(other, float)
    if diff.shape != np.shape(other) or diff.ndim != 1:
        raise ValueError(f"reference and other must both have shape (n,), got {np.shape(reference)}, {np.shape(other)}")
    if len(diff) < 2 or np.std(diff) == 0:
        return math.nan, math.nan, math.nan
    res = stats.ttest_rel(reference, other, alternative="greater")
    return float(res.statistic), float(res.pvalue), float(diff.mean() / diff.std(ddof=1))


def holm(p: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (nan stays nan and does not count)."""
    idx = sorted((i for i, v in enumerate(p) if not math.isnan(v)), key=lambda i: p[i])
    out, running = [math.nan] * len(p), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (len(idx) - rank) * p[i]))
        out[i] = running
    return out


def analyze(study: Study, rows: Iterable[Mapping], alpha: float = ALPHA, unit: str = "pair",
            allow_incomplete: bool = False) -> StudyAnalysis:
    """MOS ± SD per method and aspect, and the reference against every other method.

    A pair is (participant, stimulus): in layouts "panel" and "pairs" both scores come from the
    same screen, in "single" from the two screens of that stimulus. unit="participant" averages
    each participant's pairs first (n = participants; conservative where the paper's unit, the
    pair, treats a participant's answers as independent)."""
    if unit not in ("pair", "participant"):
        raise ValueError(f"unit must be 'pair' or 'participant', got {unit!r}")
    scores, missing = collect_scores(study, rows, allow_incomplete)
    cells = defaultdict(list)  # (aspect, method, participant, stimulus) -> scores
    pairs = {}  # (aspect, method, participant, stimulus) -> (reference score, method score)
    ref = study.reference
    for p in study.participants:
        for t in p.trials:
            by_method = {study.clip_by_id[c].method: c for c in t.clips}
            for a in study.aspects:
                got = {m: scores.get((p.id, t.id, c, a)) for m, c in by_method.items()}
                for m, s in got.items():
                    if s is not None:
                        cells[(a, m, p.id, t.stimulus)].append(s)
                if study.layout != "single" and got.get(ref) is not None:
                    pairs |= {(a, m, p.id, t.stimulus): (got[ref], s) for m, s in got.items()
                              if m != ref and s is not None}
    if study.layout == "single":
        for (a, m, pid, sid), v in cells.items():
            if m != ref and (a, ref, pid, sid) in cells:
                r = cells[(a, ref, pid, sid)]
                pairs[(a, m, pid, sid)] = (sum(r) / len(r), sum(v) / len(v))

    def by_unit(items: dict) -> dict:  # key -> value, grouped to the analysis unit
        if unit == "pair":
            return items
        groups = defaultdict(list)
        for (pid, _sid), v in items.items():
            groups[pid].append(v)
        return {pid: np.mean(v, axis=0) for pid, v in groups.items()}

    out_scores, comparisons = [], []
    for a in study.aspects:
        for m in study.methods:
            v = np.array(list(by_unit({k[2:]: sum(s) / len(s) for k, s in cells.items() if k[:2] == (a, m)}).values()))
            out_scores.append(MethodScore(a, m, float(v.mean()) if len(v) else math.nan,
                                          float(v.std(ddof=1)) if len(v) > 1 else math.nan, len(v)))
        found = []
        for m in study.methods:
            if m == ref:
                continue
            v = np.array(list(by_unit({k[2:]: pr for k, pr in pairs.items() if k[:2] == (a, m)}).values()),
                         float).reshape(-1, 2)
            t, pv, d = paired_test(v[:, 0], v[:, 1])
            found.append([a, m, ref, len(v), float((v[:, 0] - v[:, 1]).mean()) if len(v) else math.nan, t, pv, d])
        for row, ph in zip(found, holm([r[6] for r in found])):
            comparisons.append(Comparison(*row[:7], ph, row[7]))
    return StudyAnalysis(out_scores, comparisons, unit, alpha, len(scores), missing)


def simulate_ratings(study: Study, effects: Mapping | None = None, seed: int = 0, base: float = 3.0,
                     noise_sd: float = 0.8, participant_sd: float = 0.5, stimulus_sd: float = 0.4) -> list[dict]:
    """Submitted rating rows for every screen of `study` from a latent model (for tests and power):
    score = clip(round(base + effect + participant + stimulus + noise), 1, 5). effects: method or
    (method, aspect) -> shift of the latent mean in scale points."""
    effects = dict(effects or {})
    rng = np.random.default_rng(seed)
    u = {p.id: rng.normal(0, participant_sd) for p in study.participants}
    v = {s.id: rng.normal(0, stimulus_sd) for s in study.stimuli}
    rows = []
    for p in study.participants:
        for t in p.trials:
            for c in t.clips:
                m = study.clip_by_id[c].method
                for a in study.aspects:
                    latent = base + effects.get((m, a), effects.get(m, 0.0)) + u[p.id] + v[t.stimulus]
                    score = int(np.clip(np.rint(latent + rng.normal(0, noise_sd)), LIKERT_MIN, LIKERT_MAX))
                    rows.append(dict(participant=p.id, trial=t.id, clip=c, aspect=a, score=score, submitted=1))
    return rows


# ------------------------------------------------------------------------ tables (paper's layout)

def _fmt(x: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(x) else f"{x:.{digits}f}"


def _fmt_p(p: float) -> str:
    return "n/a" if math.isnan(p) else "< 0.001" if p < 0.001 else f"{p:.3f}"


def _ordered(study: Study) -> list[str]:
    """Table order: the other methods as listed, the reference last (as in the paper)."""
    return [m for m in study.methods if m != study.reference] + [study.reference]


def _cells(analysis: StudyAnalysis, study: Study, aspect: str, m: str) -> list[str]:
    s = analysis.score(aspect, m)
    if m == study.reference:
        return [_fmt(s.mos), _fmt(s.sd), "–", "–"]
    c = analysis.comparison(aspect, m)
    return [_fmt(s.mos), _fmt(s.sd), _fmt_p(c.p), _fmt(c.d)]


def table_mos(analysis: StudyAnalysis, study: Study, aspect: str) -> str:
    """Table 3 layout: one aspect; Method | Training Set | MOS | Score SD | p-value | Cohen's d."""
    lines = ["| Method | Training Set | MOS | Score SD | p-value | Cohen's d |", "|---|---|---|---|---|---|"]
    lines += [f"| {study.label(m)} | {study.training_set(m)} | " + " | ".join(_cells(analysis, study, aspect, m)) + " |"
              for m in _ordered(study)]
    return "\n".join(lines)


def table_aspects(analysis: StudyAnalysis, study: Study) -> str:
    """Table 4 layout: Aspect | Method | Training Dataset | MOS | Score SD | p-value | Cohen's d."""
    lines = ["| Aspect | Method | Training Dataset | MOS | Score SD | p-value | Cohen's d |",
             "|---|---|---|---|---|---|---|"]
    for a in study.aspects:
        for k, m in enumerate(_ordered(study)):
            lines.append(f"| {ASPECT_LABELS.get(a, a) if k == 0 else ''} | {study.label(m)} | {study.training_set(m)} | "
                         + " | ".join(_cells(analysis, study, a, m)) + " |")
    return "\n".join(lines)


def table_ablation(analysis: StudyAnalysis, study: Study) -> str:
    """Table 5 layout: Configuration | MOS (aspect) ..., as MOS ± SD; * = below the reference at
    the one-sided level alpha."""
    head = "| Configuration | " + " | ".join(f"MOS ({ASPECT_LABELS.get(a, a)})" for a in study.aspects) + " |"
    lines = [head, "|---|" + "---|" * len(study.aspects)]
    for m in _ordered(study):
        cells = []
        for a in study.aspects:
            s = analysis.score(a, m)
            star = "" if m == study.reference or not analysis.comparison(a, m).p < analysis.alpha else " *"
            cells.append(f"{_fmt(s.mos)} ± {_fmt(s.sd)}{star}")
        lines.append(f"| {study.label(m)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_markdown(analysis: StudyAnalysis, study: Study) -> str:
    """All three tables with the test's description, plus what is missing if anything is."""
    n = {a: max(s.n for s in analysis.scores if s.aspect == a) for a in study.aspects}
    unit = "participant x stimulus pairs" if analysis.unit == "pair" else "participants (means over stimuli)"
    parts = [f"# Perceptual study: {study.name}", "",
             f"{len(study.participants)} participants, {len(study.stimuli)} stimuli, layout '{study.layout}', "
             f"{analysis.n_ratings} ratings on a {LIKERT_MIN}-{LIKERT_MAX} Likert scale. MOS ± SD over {unit} "
             f"(n = {', '.join(f'{a}: {k}' for a, k in n.items())}); p from one-sided paired t-tests "
             f"(H1: {study.label(study.reference)} rated higher), Cohen's d = mean / SD of the paired differences.",
             ""]
    for a in study.aspects:
        parts += [f"## {ASPECT_LABELS.get(a, a)} (table 3 layout)", "", table_mos(analysis, study, a), ""]
    parts += ["## Both aspects (table 4 layout)", "", table_aspects(analysis, study), "",
              "## Configurations (table 5 layout)", "", table_ablation(analysis, study), "",
              f"\\* p < {analysis.alpha} against {study.label(study.reference)}. Holm-adjusted p: "
              + "; ".join(f"{c.aspect}/{c.method} {_fmt_p(c.p_holm)}" for c in analysis.comparisons), ""]
    if analysis.missing:
        parts += ["## Incomplete data", "", "Analysed the complete pairs only. Missing:", ""]
        parts += [f"* {line}" for line in analysis.missing] + [""]
    return "\n".join(parts)
