"""Training losses of the deformation fusion module (paper eqs. 9-12), as pure batched functions.

Units. The rig's displacements are in metres (about 1e-3..1e-2), so every length is multiplied
by `DFMLossConfig.scale` before a loss is taken. Set `scale = unit_scale(train_displacements)`,
so that predicting zero costs exactly 1; the default 300 is that value, rounded, for the rig's
face crop on a toy corpus. The balance matters: L_rec grows with scale^2 and L_sparse with scale.
The DFM's weights are lengths too (each is the RMS displacement its unit-RMS blendshape
contributes, see blendtalk.models.dfm), so the same scale applies to them and the lambdas below
are relative to a unit-scale reconstruction loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DFMLossConfig:
    """Weights of the DFM loss terms (eq. 10)."""

    scale: float = 300.0  # lengths (d, d_hat, w) are multiplied by this; ~1/RMS displacement (3 mm) on the rig; measure with unit_scale
    lambda_sparse: float = 1e-1  # L1 on cross-domain weights; toy sweep at unit scale: 1e-2 too weak, 1e-1..1 work; 0 = "without L_sparse"
    # The speech inputs' cross half (w_e^s, which reads their emotion leak) pays this share of that L1;
    # the expression inputs' (w_s^e, which reads articulation) pays it whole. Below 1 (not in the paper):
    # speech may shed its leak while an emotion keeps its open mouth (docs/experiments.md).
    speech_cross_share: float = 1.0
    lambda_lap: float = 1e-1  # uniform-Laplacian smoothness of outputs; 0 = the "without L_lap" ablation
    lambda_reg: float = 1e-4  # L2 on outputs; it pulls towards zero, so keep it well below 1
    lambda_orth: float = 0.0  # squared cosines between speech and expression blendshapes; > 0 keeps B_e out of span(B_s)
    # Two priors the paper does not have (0 = off; see eval/dfm_weight_space.py for what they do):
    lambda_invariance: float = 0.0  # expression weights unchanged when a speech frame is added to an expression frame
    invariance_mix: float = 1.0  # that speech frame is scaled by U(0, invariance_mix)
    lambda_speech_upper: float = 0.0  # share of the speech blendshapes' energy on the upper face (speech moves the lower face)
    lip_weight: float = 5.0  # m_v on lip vertices (1 elsewhere): lip sync is judged on the lips


def _check_displacements(d: torch.Tensor, what: str) -> None:
    if d.ndim < 2 or d.shape[-1] != 3:
        raise ValueError(f"{what} must have shape (..., V, 3), got {tuple(d.shape)}")


def vertex_weights(
    num_vertices: int,
    lip_mask: torch.Tensor | None = None,
    lip_weight: float = 1.0,
    crop_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-vertex weights m_v (V,) for the reconstruction loss.

    1 everywhere, `lip_weight` (DFMLossConfig.lip_weight) where lip_mask (V,) is True, and 0 where
    crop_mask (V,) is False: the geometric map only sees the face crop, so motion outside it (the
    rig's 'face_crop' mask) cannot be encoded and should not be scored.
    """
    m = torch.ones(num_vertices)
    for mask, value, keep in ((lip_mask, float(lip_weight), True), (crop_mask, 0.0, False)):
        if mask is None:
            continue
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.shape != (num_vertices,):
            raise ValueError(f"vertex masks must have shape (V,) = ({num_vertices},), got {tuple(mask.shape)}")
        m[mask if keep else ~mask] = value
    return m


def unit_scale(d: torch.Tensor, vertex_weights: torch.Tensor | None = None) -> float:
    """1 / weighted RMS vertex displacement of data d (..., V, 3): a `scale` under which L_rec(0, d) = 1."""
    _check_displacements(d, "d")
    sq = d.double().pow(2).sum(-1).reshape(-1, d.shape[-2]).mean(0)  # (V,) mean squared length
    m = torch.ones_like(sq) if vertex_weights is None else vertex_weights.to(sq)
    ms = float((m * sq).sum() / m.sum())
    if ms <= 0:
        raise ValueError("d is all zeros; unit_scale needs displacements that move")
    return ms**-0.5


def reconstruction_loss(
    pred: torch.Tensor, target: torch.Tensor, vertex_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Weighted squared vertex error (eq. 11), a scalar.

    pred, target: (..., V, 3). vertex_weights m: (V,) or None (all ones). Returns the mean over
    the leading dims of sum_v m_v ||pred_v - target_v||^2 / sum_v m_v: dividing by sum_v m_v makes
    it a weighted mean per vertex, so a unit-length error everywhere costs 1 whatever V and m are.
    """
    _check_displacements(pred, "pred")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    sq = (pred - target).pow(2).sum(-1)  # (..., V)
    if vertex_weights is None:
        return sq.mean()
    if vertex_weights.shape != (pred.shape[-2],):
        raise ValueError(f"vertex_weights must have shape (V,) = ({pred.shape[-2]},), got {tuple(vertex_weights.shape)}")
    m = vertex_weights.to(sq)
    return (sq * m).sum(-1).mean() / m.sum()


def sparsity_loss(w_s: torch.Tensor, w_e: torch.Tensor, num_speech_blendshapes: int) -> torch.Tensor:
    """L1 on the cross-domain halves (eq. 9), a scalar.

    w_s: (..., K_s + K_e) weights of speech inputs [w_s^s | w_e^s]; w_e: (..., K_s + K_e) weights
    of expression inputs [w_s^e | w_e^e]; num_speech_blendshapes: K_s, the length of the speech
    half. Returns cross_l1(w_e^s, w_s^e).
    """
    k = num_speech_blendshapes
    if w_s.ndim == 0 or w_e.ndim == 0 or w_s.shape[-1] != w_e.shape[-1] or not 0 < k < w_s.shape[-1]:
        raise ValueError(
            f"w_s and w_e must have shape (..., K_s + K_e) with K_s = {k} < K_s + K_e, got {tuple(w_s.shape)} and {tuple(w_e.shape)}"
        )
    return cross_l1(w_s[..., k:], w_e[..., :k])


def cross_l1(cross_s: torch.Tensor, cross_e: torch.Tensor, speech_share: float = 1.0) -> torch.Tensor:
    """speech_share * mean ||w_e^s||_1 + mean ||w_s^e||_1 from the cross halves cross_s (..., K_e), cross_e (..., K_s).

    The L1 norm sums over a sample's cross weights (so one unit of cross weight costs the same
    whatever K is); the mean is over the leading dims (so the two domains count equally whatever
    their batch sizes).
    """
    return speech_share * cross_s.abs().sum(-1).mean() + cross_e.abs().sum(-1).mean()


def cross_cosine_loss(blendshapes: torch.Tensor, num_speech_blendshapes: int) -> torch.Tensor:
    """Mean over expression blendshapes of sum_j cos^2(b_e, b_s_j), a scalar in [0, K_s].

    blendshapes: [B_s | B_e] (V*3, K_s + K_e). An expression blendshape that lies in the speech
    blendshapes' span can explain articulation that leaks into the expression corpus, which then
    survives fusion; this term pushes B_e away from B_s so that the leak must go through the
    sparse (and dropped) cross half instead.
    """
    k = num_speech_blendshapes
    unit = blendshapes / blendshapes.norm(dim=0, keepdim=True).clamp_min(1e-12)
    cos = unit[:, :k].T @ unit[:, k:]  # (K_s, K_e)
    return cos.pow(2).sum(0).mean()


def invariance_loss(w_mixed: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Mean squared change of expression weights, a scalar.

    w_mixed: (B, K_e) own-domain weights of expression frames with a speech frame added; w: (B, K_e)
    those of the frames alone (a target: detach it). Speech added to a face should not change what
    the expression encoder reads as expression, so the articulation that leaks into an expression
    corpus has to leave through the cross-domain half.
    """
    if w_mixed.shape != w.shape:
        raise ValueError(f"w_mixed and w must have the same shape, got {tuple(w_mixed.shape)} and {tuple(w.shape)}")
    return (w_mixed - w).pow(2).mean()


def speech_upper_face_loss(blendshapes: torch.Tensor, num_speech_blendshapes: int, upper_mask: torch.Tensor) -> torch.Tensor:
    """Mean share of a speech blendshape's squared displacement that lies on the upper face, in [0, 1].

    blendshapes: [B_s | B_e] (V*3, K_s + K_e), vertex-major rows; upper_mask: (V,) bool. Articulation
    moves the jaw, lips and cheeks, not the brows and eyelids: a speech blendshape that does can carry
    a speaker's resting expression through fusion.
    """
    v = upper_mask.shape[0]
    if blendshapes.shape[0] != 3 * v:
        raise ValueError(f"blendshapes must have V*3 = {3 * v} rows for a (V,) upper_mask, got {blendshapes.shape[0]}")
    sq = blendshapes[:, :num_speech_blendshapes].reshape(v, 3, -1).pow(2).sum(1)  # (V, K_s)
    return (sq[upper_mask.to(sq.device, torch.bool)].sum(0) / sq.sum(0).clamp_min(1e-24)).mean()


def laplacian_loss(pred: torch.Tensor, laplacian: torch.Tensor) -> torch.Tensor:
    """Uniform-Laplacian smoothness (eq. 12), a scalar.

    pred: (..., V, 3). laplacian L = I - D^-1 A: (V, V) sparse or dense. (L d)_i = d_i - mean of
    its neighbours. Returns the mean over leading dims and vertices of ||(L d)_i||^2 (per vertex,
    like the reconstruction loss).
    """
    _check_displacements(pred, "pred")
    v = pred.shape[-2]
    if tuple(laplacian.shape) != (v, v):
        raise ValueError(f"laplacian must have shape (V, V) = ({v}, {v}), got {tuple(laplacian.shape)}")
    x = pred.reshape(-1, v, 3).permute(1, 0, 2).reshape(v, -1)  # (V, B*3)
    laplacian = laplacian.to(device=x.device, dtype=x.dtype)
    lx = torch.sparse.mm(laplacian, x) if laplacian.is_sparse else laplacian @ x  # (V, B*3)
    return lx.pow(2).sum() / (x.shape[1] // 3 * v)


def l2_loss(pred: torch.Tensor) -> torch.Tensor:
    """L2 regulariser on output deformations: mean over leading dims and vertices of ||d_v||^2.

    pred: (..., V, 3). Returns a scalar.
    """
    _check_displacements(pred, "pred")
    return pred.pow(2).sum(-1).mean()


def dfm_loss(
    outputs: dict[str, torch.Tensor],
    d_s: torch.Tensor,
    d_e: torch.Tensor,
    config: DFMLossConfig,
    vertex_weights: torch.Tensor | None = None,
    laplacian: torch.Tensor | None = None,
    upper_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total DFM loss (eq. 10) = L_rec + lambda_sparse L_sparse + lambda_lap L_lap + lambda_reg L_reg,
    plus the optional terms not in the paper (lambda_orth, lambda_invariance, lambda_speech_upper).

    outputs: the DFM's forward dict (cross_s (B, K_e), cross_e (B', K_s), own_e (B', K_e), rec_s (B, V, 3),
    rec_e (B', V, 3); see DeformationFusionModule.forward).
    d_s (B, V, 3), d_e (B', V, 3): the targets in the rig's unit. vertex_weights m (V,) or None.
    laplacian (V, V) or None (then L_lap is skipped; required when lambda_lap > 0).
    lambda_invariance > 0 needs outputs["mixed_e"] (B', K_e) (the forward pass given d_mixed);
    lambda_speech_upper > 0 needs upper_mask (V,) bool.
    L_rec sums the two domains' reconstruction losses. Terms with a zero lambda are not computed,
    so a zero really drops them. Returns (total, parts) with parts as floats for logging.
    """
    s = config.scale
    k_speech = outputs["cross_e"].shape[-1]  # w_s^e has the speech half's length
    rec_s = reconstruction_loss(s * outputs["rec_s"], s * d_s, vertex_weights)
    rec_e = reconstruction_loss(s * outputs["rec_e"], s * d_e, vertex_weights)
    total = rec_s + rec_e
    parts = {"rec_s": rec_s, "rec_e": rec_e}
    if config.lambda_sparse:
        parts["sparse"] = cross_l1(s * outputs["cross_s"], s * outputs["cross_e"], config.speech_cross_share)
        total = total + config.lambda_sparse * parts["sparse"]
    if config.lambda_lap:
        if laplacian is None:
            raise ValueError("lambda_lap > 0 needs the mesh's (V, V) laplacian (blendtalk.face.geometry.uniform_laplacian)")
        parts["lap"] = laplacian_loss(s * outputs["rec_s"], laplacian) + laplacian_loss(s * outputs["rec_e"], laplacian)
        total = total + config.lambda_lap * parts["lap"]
    if config.lambda_reg:
        parts["reg"] = l2_loss(s * outputs["rec_s"]) + l2_loss(s * outputs["rec_e"])
        total = total + config.lambda_reg * parts["reg"]
    if config.lambda_orth:
        parts["orth"] = cross_cosine_loss(outputs["blendshapes"], k_speech)
        total = total + config.lambda_orth * parts["orth"]
    if config.lambda_invariance:
        if "mixed_e" not in outputs:
            raise ValueError("lambda_invariance > 0 needs the forward pass's mixed_e (call the DFM with d_mixed)")
        parts["invariance"] = invariance_loss(s * outputs["mixed_e"], s * outputs["own_e"].detach())
        total = total + config.lambda_invariance * parts["invariance"]
    if config.lambda_speech_upper:
        if upper_mask is None:
            raise ValueError("lambda_speech_upper > 0 needs the rig's (V,) upper_face mask")
        parts["speech_upper"] = speech_upper_face_loss(outputs["blendshapes"], k_speech, upper_mask)
        total = total + config.lambda_speech_upper * parts["speech_upper"]
    parts["total"] = total
    return total, {k: float(v.detach()) for k, v in parts.items()}
