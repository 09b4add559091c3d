"""The ratings of a perceptual study (`study`): a SQLite file the rating app (eval/study/rate.py)
writes one screen at a time, safe to share between its request threads, and CSV rows for analysis."""

from __future__ import annotations

import csv
import sqlite3
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Mapping, Sequence

from .study import LIKERT_MAX, LIKERT_MIN, Participant, Study, StudyError, Trial, check_id

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
