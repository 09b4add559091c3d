"""Evaluation of speech drivers against ground-truth motion: LVE, FDD and MVE per phone source.

Vertex sets: on the shipped rig its pinned masks 'lips' and 'upper_face' (assets/face_rig.npz); on
VOCASET (FLAME) the 'lips' and 'forehead' + 'eye_region' regions of FLAME_masks.pkl.
* lve_mm2: per frame the max over lip vertices of the squared L2 error, averaged over all frames
  of all sequences (FaceFormer / CodeTalker), mm^2.
* fdd_mm: per upper-face vertex |std_t ||d_pred|| - std_t ||d_true|||, mean over vertices, then
  over sequences (blendtalk.evaluation.metrics.face_dynamics_deviation), mm.
* fdd_codetalker_mm2: CodeTalker's variant: std over time of the squared displacement norm, mean
  over upper-face vertices, truth minus prediction (signed: > 0 = too little motion), mm^2.
* mve_mm: mean vertex L2 error over the whole mesh, mm.
* bilabial_closure (rig only): share of /p b m/ phones where the lips close below 1 mm
  (blendtalk.evaluation.lipsync), each style's prediction counted.
"""

from __future__ import annotations

import numpy as np
import torch

from .metrics import MM_PER_M
from ..models.faceformer import FaceFormer


def region_masks(config, num_vertices: int) -> dict[str, np.ndarray] | None:
    """Vertex indices of 'lips' and 'upper_face': the rig's pinned masks, or FLAME's for VOCASET; None if unknown."""
    from ..face.rig import load_rig

    rig = load_rig()
    if num_vertices == rig.num_vertices:
        return {"lips": np.flatnonzero(rig.mask("lips")), "upper_face": np.flatnonzero(rig.mask("upper_face"))}
    if config.flame_masks:
        from ..face.flame import read_flame_masks

        m = read_flame_masks(config.flame_masks)
        return {"lips": np.asarray(m["lips"]), "upper_face": np.union1d(m["forehead"], m["eye_region"])}
    return None


def motion_metrics(pred: torch.Tensor, target: torch.Tensor, masks: dict | None) -> dict[str, float]:
    """Per-sequence sums for `summarise`: pred, target (B, T, V, 3) displacements in metres (B styles)."""
    err = (pred - target).pow(2).sum(-1)  # (B, T, V) squared errors
    out = {"frames": float(target.shape[1]), "mve_mm": float(err.sqrt().mean()) * MM_PER_M * target.shape[1]}
    if masks is not None:
        lips, upper = (torch.as_tensor(masks[k], device=pred.device) for k in ("lips", "upper_face"))
        out["lve_mm2"] = float(err[..., lips].amax(-1).mean()) * MM_PER_M**2 * target.shape[1]  # frame-weighted
        std_p = pred[..., upper, :].norm(dim=-1).std(dim=1, unbiased=False)  # (B, U)
        std_t = target[..., upper, :].norm(dim=-1).std(dim=1, unbiased=False)
        out["fdd_mm"] = float((std_p - std_t).abs().mean()) * MM_PER_M
        # CodeTalker's FDD: std over time of the squared displacement norm, mean over vertices, truth - prediction
        sq_p = pred[..., upper, :].pow(2).sum(-1).std(dim=1, unbiased=False).mean(-1)  # (B,)
        sq_t = target[..., upper, :].pow(2).sum(-1).std(dim=1, unbiased=False).mean(-1)
        out["fdd_codetalker_mm2"] = float((sq_t - sq_p).mean()) * MM_PER_M**2
    return out


def summarise(rows: list[dict[str, float]]) -> dict[str, float]:
    """LVE and MVE averaged over all frames (CodeTalker), FDDs over sequences."""
    if not rows:
        return {}
    frames = sum(r["frames"] for r in rows)
    out = {"sequences": len(rows), "frames": int(frames)}
    for k in ("lve_mm2", "mve_mm"):
        if k in rows[0]:
            out[k] = sum(r[k] for r in rows) / frames
    for k in ("fdd_mm", "fdd_codetalker_mm2"):
        if k in rows[0]:
            out[k] = float(np.mean([r[k] for r in rows]))
    if "bilabials" in rows[0]:
        count = sum(r["bilabials"] for r in rows)
        out["bilabial_closure"] = sum(r["bilabials_closed"] for r in rows) / count if count else float("nan")
    return out


def closure_counts(pred: torch.Tensor, rig, phones) -> dict[str, float]:
    """Bilabials (counted once per prediction) and how many close: pred (B, T, V, 3) displacements on `rig`."""
    from .lipsync import bilabial_closure

    gap = rig.lip_gap(pred.double().cpu().numpy() + rig.vertices)  # (B, T)
    rows = [bilabial_closure(g, phones) for g in gap]
    count = sum(r["bilabials"] for r in rows)
    return {"bilabials": count, "bilabials_closed": sum(r["bilabial_closure"] * r["bilabials"] for r in rows if r["bilabials"])}


@torch.no_grad()
def evaluate_driver(drive, data, masks: dict | None, sources=("aligned",), max_sequences: int | None = None,
                    rig=None) -> dict[str, dict]:
    """Metrics of any speech driver per phone source: drive(n, source) -> (B, T, V, 3) displacements
    of sequence n (B predictions, e.g. one per style, are averaged); see motion_metrics and summarise.

    rig: on the rig's topology, also `bilabial_closure` (blendtalk.evaluation.lipsync, 1 mm), judged at the
    reference phones: the synthetic corpus's exact ones, else the aligned ones.
    """
    reference = data.phones.get("exact", data.phones.get("aligned"))
    if rig is None or reference is None or data.motion.shape[1] != rig.num_vertices:
        reference = None
    report = {}
    for source in sources:
        rows = []
        for n in range(min(len(data), max_sequences or len(data))):
            target = data.motion[data.rows(n)][None]  # (1, T, V, 3)
            pred = drive(n, source).to(target)
            rows.append(motion_metrics(pred, target, masks))
            if reference is not None:
                rows[-1] |= closure_counts(pred, rig, reference[n])
        report[source] = summarise(rows)
    return report


def evaluate_model(model: FaceFormer, data, masks: dict | None, sources=("aligned",),
                   styles: str = "mean", max_sequences: int | None = None, rig=None) -> dict[str, dict]:
    """Autoregressive generation on whole sequences; metrics per phone source (or 'audio' for wav2vec2).

    styles: "mean" conditions on the uniform mixture of the training styles (one pass); "all"
    averages over each training style (CodeTalker's protocol for unseen subjects).
    """
    if styles not in ("mean", "all"):
        raise ValueError(f"styles must be 'mean' or 'all', got {styles!r}")
    n_spk, device = model.config.num_speakers, model.slopes.device
    speaker = torch.eye(n_spk, device=device) if styles == "all" else torch.full((1, n_spk), 1.0 / n_spk, device=device)
    if model.config.encoder.kind != "phonetic":
        sources = ("audio",)

    def drive(n: int, source: str) -> torch.Tensor:
        t, r = int(data.lengths[n]), data.rows(n)
        if source == "audio":
            x = torch.from_numpy(data.audio_window(n, 0, t))[None]
        else:
            x = data.phonetic(torch.arange(r.start, r.stop, device=data.motion.device), source)[None]
        return model.generate(x.expand(speaker.shape[0], *x.shape[1:]), t, speaker)  # (B, T, V, 3)

    return evaluate_driver(drive, data, masks, sources, max_sequences, rig)


def evaluate_procedural(data, rig, masks: dict | None, sources=("aligned",),
                        max_sequences: int | None = None) -> dict[str, dict]:
    """The procedural viseme driver (default speaker style) on each source's phones; needs data on `rig`."""
    from ..speech.visemes import VisemeDriver

    if data.motion.shape[1] != rig.num_vertices:
        raise ValueError(f"the procedural driver animates the rig (V={rig.num_vertices}); the data has V={data.motion.shape[1]}")
    driver = VisemeDriver(rig)

    def drive(n: int, source: str) -> torch.Tensor:
        return torch.from_numpy(driver(data.phones[source][n], int(data.lengths[n]))[1])[None]

    return evaluate_driver(drive, data, masks, [s for s in sources if s in data.phones], max_sequences, rig)
