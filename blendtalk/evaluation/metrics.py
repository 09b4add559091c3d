"""Motion metrics: LVE, FDD, MVE and region errors, as pure batched functions on (T, V, 3) arrays.

LVE (lip vertex error, the FaceFormer/CodeTalker protocol): per frame the maximum over lip
vertices of the squared L2 error, averaged over frames. FDD (upper-face dynamics deviation,
CodeTalker): per upper-face vertex, the standard deviation over time of the displacement norm;
the mean absolute difference of those between prediction and truth. MVE: mean vertex L2 error.
All in the input's unit (metres on the rig); MM_PER_M converts lengths, its square converts LVE.
The vertex sets are the rig's pinned `lips` and `upper_face` masks (see assets/face_rig.npz).
"""

from __future__ import annotations

import numpy as np
import torch

MM_PER_M = 1000.0


def _pair(pred, target, what: str = "pred"):
    pred, target = torch.as_tensor(pred, dtype=torch.float64), torch.as_tensor(target, dtype=torch.float64)
    if pred.shape != target.shape or pred.ndim < 2 or pred.shape[-1] != 3:
        raise ValueError(f"{what} and target must both have shape (..., T, V, 3), got {tuple(pred.shape)} and {tuple(target.shape)}")
    return pred, target


def _indices(mask, device) -> torch.Tensor:
    """The True positions of a (V,) bool mask, as a long tensor on `device`."""
    return torch.as_tensor(np.flatnonzero(np.asarray(mask)), device=device)


def lip_vertex_error(pred, target, lip_mask) -> float:
    """LVE: mean over frames of max over lip vertices of ||pred - target||^2. (T, V, 3) each."""
    pred, target = _pair(pred, target)
    idx = _indices(lip_mask, pred.device)
    sq = (pred[..., idx, :] - target[..., idx, :]).pow(2).sum(-1)  # (..., T, L)
    return float(sq.amax(-1).mean())


def face_dynamics_deviation(pred, target, region_mask) -> float:
    """FDD over the region (upper face): mean_v |std_t ||pred_v|| - std_t ||target_v|||. (T, V, 3) displacements."""
    pred, target = _pair(pred, target)
    idx = _indices(region_mask, pred.device)
    sp = pred[..., idx, :].norm(dim=-1).std(dim=-2, unbiased=False)  # (..., R)
    st = target[..., idx, :].norm(dim=-1).std(dim=-2, unbiased=False)
    return float((sp - st).abs().mean())


def mean_vertex_error(pred, target, region_mask=None) -> float:
    """MVE: mean over frames and (region) vertices of ||pred - target||. (..., V, 3) each."""
    pred, target = _pair(pred, target)
    err = (pred - target).norm(dim=-1)  # (..., V)
    if region_mask is not None:
        err = err[..., _indices(region_mask, err.device)]
    return float(err.mean())


def arkit_mapping_error(rig, fused: np.ndarray, arkit: np.ndarray) -> dict:
    """How far the ARKit-driven face is from the fused one: fused (T, V, 3) vertices, arkit (T, 52)
    weights -> mean and 95th-percentile vertex distance over all vertices and over the lips, in mm."""
    mapped = rig.vertices[None] + rig.displacement(arkit)  # (T, V, 3)
    dist = np.linalg.norm(mapped - fused, axis=-1) * 1e3  # (T, V) mm
    lips = dist[:, rig.mask("lips")]
    return {"mean_mm": round(float(dist.mean()), 3), "p95_mm": round(float(np.percentile(dist, 95)), 3),
            "lips_mean_mm": round(float(lips.mean()), 3), "lips_p95_mm": round(float(np.percentile(lips, 95)), 3),
            "frames": int(len(fused))}
