"""The analysis of a perceptual study (`study`): MOS per method and aspect, one-sided paired t-tests
of "ours vs X" with Holm's correction, simulated ratings for power checks, and the paper's tables."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

from .study import ALPHA, ASPECT_LABELS, LIKERT_MAX, LIKERT_MIN, IncompleteDataError, Study


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
