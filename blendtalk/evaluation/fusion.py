"""Exact fusion evaluation on the synthetic corpora, whose true speech and expression parts are known.

A case pairs a held-out speech sequence with a held-out expression sequence of one emotion. The
inputs are what a dataset holds (each with its leak): d_s = D(speech + leak_s), d_e =
D(expression + leak_e), D the rig's linear displacement. The truth is the clean sum
D(speech + expression). A fusion method maps (d_s, d_e) to a prediction; the metrics say how far
it is from the truth overall, on the lips, on the upper face, and how well the lips still close
at /p b m/ under each emotion.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from ..constants import FPS
from ..data.datasets import Split
from .metrics import MM_PER_M, lip_vertex_error, mean_vertex_error
from ..speech.phones import BILABIALS
from ..face.rig import FaceRig

FusionMethod = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (T, V, 3), (T, V, 3) -> (T, V, 3)


@dataclass
class FusionCase:
    """One evaluation case; all arrays (T, 52) rig weights, bilabial (T,) bool."""

    name: str
    emotion: str
    speech: np.ndarray
    speech_leak: np.ndarray
    expression: np.ndarray
    expression_leak: np.ndarray
    bilabial: np.ndarray


def synthetic_split(names: list[str]) -> Split:
    """The subject split used for every synthetic corpus: sorted names, 75% / 12.5% / 12.5%."""
    return Split.by_fraction(names, (0.75, 0.125, 0.125))


def _truth_names(folder: Path) -> dict[str, list[Path]]:
    by_subject: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(folder.glob("*.npz")):
        by_subject[path.stem.split("_")[0]].append(path)
    if not by_subject:
        raise FileNotFoundError(f"no truth files in {folder}; generate the corpora with python -m blendtalk.data.synth")
    return by_subject


def fusion_cases(root: str | Path, subset: str = "test", max_sentences: int | None = None,
                 emotions: tuple[str, ...] | None = None) -> Iterator[FusionCase]:
    """Cases for `subset` of a synthetic corpus root: each held-out sentence x each emotion of take 1.

    Expression frames are tiled (or cut) to the speech length. (The pipeline's closure yield acts
    after fusion, the same subtraction for every method, so it is left out of the cases.)
    """
    root = Path(root)
    speech = _truth_names(root / "truth" / "speech")
    expr = _truth_names(root / "truth" / "expression")
    speakers = synthetic_split(list(speech)).subjects(subset)
    subjects = synthetic_split(list(expr)).subjects(subset)
    if not speakers or not subjects:  # a tiny corpus may leave a split empty: no cases, not a crash
        return
    expr_files = {}
    for sub in subjects:
        for path in expr[sub]:
            with np.load(path) as z:
                emotion = str(z["emotion"])
            if (emotions is None or emotion in emotions) and (sub, emotion) not in expr_files:
                expr_files[(sub, emotion)] = path
    for k, spk in enumerate(speakers):
        sub = subjects[k % len(subjects)]
        for path in speech[spk][:max_sentences]:
            with np.load(path) as z:
                s, ls = z["speech"], z["leak"]
                symbols, times = z["phone_symbols"], z["phone_times"]
            t = len(s)
            centres = (np.arange(t) + 0.5) / FPS
            bilabial = np.zeros(t, bool)
            for sym, (a, b) in zip(symbols, times):
                if sym in BILABIALS:
                    bilabial |= (centres >= a) & (centres < b)
            for (esub, emotion), epath in expr_files.items():
                if esub != sub:
                    continue
                with np.load(epath) as z:
                    e, le = z["expression"], z["leak"]
                idx = np.arange(t) % len(e)
                yield FusionCase(f"{path.stem}+{epath.stem}", emotion, s, ls, e[idx], le[idx], bilabial)


def evaluate_fusion(methods: dict[str, FusionMethod], cases, rig: FaceRig, device: str | torch.device = "cpu") -> dict:
    """Metrics per method (lengths in mm, LVE in mm^2), and the bilabial lip gap per emotion.

    fused_mve: mean vertex error vs the true fused deformation; fused_lve: LVE vs it; lip_mve and
    upper_face_mve: the same error on those regions; bilabial_gap: mean lip opening at /p b m/
    frames (the truth's own gap is not zero where an emotion parts the lips, e.g. surprise), and
    bilabial_gap_error: mean |gap - true gap| over those frames.
    """
    deltas = torch.as_tensor(rig.deltas, device=device)
    template = torch.as_tensor(rig.vertices, device=device)
    lips, upper = rig.mask("lips"), rig.mask("upper_face")
    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    gaps: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))

    def disp(w):  # (T, 52) -> (T, V, 3)
        return torch.einsum("tk,kvc->tvc", torch.as_tensor(w, device=device), deltas)

    for case in cases:
        d_s, d_e = disp(case.speech + case.speech_leak), disp(case.expression + case.expression_leak)
        truth = disp(case.speech + case.expression)
        preds = {"truth": truth}
        with torch.no_grad():
            preds |= {name: fn(d_s, d_e).to(truth) for name, fn in methods.items()}
        bilabial = torch.as_tensor(case.bilabial, device=device)
        true_gap = rig.lip_gap(template + truth[bilabial]) if case.bilabial.any() else None
        for name, pred in preds.items():
            if true_gap is not None:
                gap = rig.lip_gap(template + pred[bilabial])  # (frames,)
                gaps[name][case.emotion].append(float(gap.mean()) * MM_PER_M)
                sums[name]["bilabial_gap_error"].append(float((gap - true_gap).abs().mean()) * MM_PER_M)
            if name == "truth":
                continue
            sums[name]["fused_mve"].append(mean_vertex_error(pred, truth) * MM_PER_M)
            sums[name]["fused_lve"].append(lip_vertex_error(pred, truth, lips) * MM_PER_M**2)
            sums[name]["lip_mve"].append(mean_vertex_error(pred, truth, lips) * MM_PER_M)
            sums[name]["upper_face_mve"].append(mean_vertex_error(pred, truth, upper) * MM_PER_M)
    report = {}
    for name in list(methods) + ["truth"]:
        row = {k: float(np.mean(v)) for k, v in sums[name].items() if name != "truth" or k != "bilabial_gap_error"}
        row["bilabial_gap"] = float(np.mean([g for v in gaps[name].values() for g in v])) if gaps[name] else float("nan")
        row["bilabial_gap_by_emotion"] = {e: float(np.mean(v)) for e, v in sorted(gaps[name].items())}
        report[name] = row
    return report


KEEP_MIN_MM = 0.05  # mm: a region the emotion moves less than this on average has no share to report


@torch.no_grad()
def expression_kept(fuse: FusionMethod, speech: Iterable[np.ndarray], rig: FaceRig, device,
                    emotions: tuple[str, ...], intensity: float = 1.0) -> dict:
    """How much of each emotion survives fusion, on the lower and the upper face.

    speech: held-out speech displacements (T, V, 3), each combined with every emotion held at
    `intensity`.
    The expression's part of the result is fuse(d_s, d_e) - fuse(d_s, 0). "magnitude" is its mean
    vertex norm over that of d_e (the interpolation's part) in the region; "projection" is its
    component along d_e, <part, d_e> / <d_e, d_e>, so a part of the right size pointing elsewhere
    scores low there. 1 keeps the expression whole. Returns emotion -> region -> {"magnitude",
    "projection", "input_mm"}, or None where d_e moves the region less than KEEP_MIN_MM on average.
    """
    from ..expression.emotions import emotion_weights

    upper = torch.as_tensor(rig.mask("upper_face"), device=device)
    regions = {"lower_face": torch.as_tensor(rig.mask("face_crop"), device=device) & ~upper, "upper_face": upper}
    deltas = torch.as_tensor(rig.deltas, device=device)
    totals = defaultdict(lambda: np.zeros(5))  # (emotion, region) -> [sum |part|, sum |d_e|, <part, d_e>, <d_e, d_e>, count]
    for d_s in speech:
        d_s = torch.as_tensor(d_s, device=device)
        base = fuse(d_s, torch.zeros_like(d_s))
        for emotion in emotions:
            w = torch.as_tensor(emotion_weights(emotion, intensity), device=device)
            d_e = (w @ deltas.reshape(len(w), -1)).reshape(1, *deltas.shape[1:]).expand_as(d_s).contiguous()  # (T, V, 3)
            part = fuse(d_s, d_e) - base  # (T, V, 3)
            for name, mask in regions.items():
                p, e = part[:, mask], d_e[:, mask]
                totals[emotion, name] += [float(p.norm(dim=-1).sum()), float(e.norm(dim=-1).sum()),
                                          float((p * e).sum()), float((e * e).sum()), e.shape[0] * e.shape[1]]
    out = {}
    for emotion in emotions:
        out[emotion] = {}
        for name in regions:
            kept, given, dot, energy, count = totals[emotion, name]
            input_mm = given / max(count, 1) * MM_PER_M
            out[emotion][name] = None if input_mm < KEEP_MIN_MM else {
                "magnitude": kept / given, "projection": dot / energy, "input_mm": input_mm}
    return out
