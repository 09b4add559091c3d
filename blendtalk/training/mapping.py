"""Fitting the rig maps of blendtalk.models.mapping (paper eqs. 14-15) on the corpora.

    L = L_fit + lambda_reg L_reg + lambda_params |p|^2
    L_fit = sum_v m_v |t(M w)_v - ([B_s B_e] w)_v|^2 / sum_v m_v      (m_v: lips weighted, as in DFM training)
    L_reg = mean_v |t(M w)_v|^2                                      (L2 on the output deformation)

averaged over weight vectors w observed on the corpora (DFM-encoded training frames, combined
as at inference: speech own half + intensity * expression own half) plus sampled ones. Lengths
are multiplied by a unit scale (1 / weighted RMS target displacement) so the lambdas are relative.
See blendtalk.models.mapping for how ARKit (closed form, then bounded refinement) and FLAME
(linearised closed form, then refinement through the jaw) are solved.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from ..evaluation.metrics import MM_PER_M
from ..models.mapping import ARKIT_BOUNDS, JAW_NAMES, ArkitMapping, FlameMapping, Mapping
from .losses import DFMLossConfig, vertex_weights

SAMPLE_RMS = 3e-3  # metres: amplitude of sampled weights when no corpus gives their scale (~RMS face motion on the rig)
JAW_STEP = 1e-3  # rad: central-difference step for FLAME's jaw Jacobian (error ~ step^2)

Displacement = Callable[[torch.Tensor], torch.Tensor]  # params (N, P) -> displacements (N, V, 3)


@dataclass
class MappingFitConfig:
    """How a rig map is fitted."""

    lambda_reg: float = 1e-3  # L2 on the target's output deformation (paper eq. 14), relative to unit-scale L_fit
    lambda_params: float = 1e-4  # ridge on the parameters: units no blendshape needs stay at 0; a Gaussian prior for FLAME's unit-variance coefficients
    lip_weight: float = DFMLossConfig.lip_weight  # m_v on lip vertices, as in DFM training
    crop_loss: bool = False  # fit and score only the rig's face crop; match the DFM's training (DFMTrainConfig.crop_loss)
    bounded: bool = True  # ARKit: refine M for the clamped weights clamp(M w, 0, 1) that avatars receive
    steps: int = 1500  # Adam refinement steps (ARKit bounded; FLAME through the nonlinear jaw); 0 = closed form only
    lr: float = 1e-2  # Adam step on the scale-free map (parameters per unit-scale weight)
    batch_size: int = 256  # weight vectors per FLAME refinement step (ARKit uses all of them at once)
    seed: int = 0


# ---------------------------------------------------------------- weights to fit on


@torch.no_grad()
def observed_weights(dfm, speech: torch.Tensor, expression: torch.Tensor, num: int,
                     generator: torch.Generator, intensity: tuple[float, float] = (0.0, 1.25)) -> torch.Tensor:
    """Weights as inference makes them: [w_s^s of a speech frame | a * w_e^e of an expression frame].

    speech (N, V, 3), expression (M, V, 3) displacements; random pairs, a ~ U(intensity).
    Returns (num, K_s + K_e) on the DFM's device.
    """
    dev = dfm.blendshape_weight.device
    ws = dfm.split(dfm.encode_speech(speech.to(dev)))[0]  # (N, K_s)
    we = dfm.split(dfm.encode_expression(expression.to(dev)))[1]  # (M, K_e)
    i = torch.randint(len(ws), (num,), generator=generator).to(dev)
    j = torch.randint(len(we), (num,), generator=generator).to(dev)
    a = torch.empty(num, 1).uniform_(*intensity, generator=generator).to(dev)
    return dfm.join(ws[i], a * we[j])


def sample_weights(num_weights: int, num: int, generator: torch.Generator,
                   reference: torch.Tensor | None = None, scale: float = SAMPLE_RMS) -> torch.Tensor:
    """(num, K) sampled weights: half single blendshapes, half mixtures.

    With observed `reference` (N, K): single ones take a value of their column scaled by
    U(0.5, 2), mixtures resample every column independently (marginals kept, correlations broken,
    so M also sees combinations the corpus lacks). Without: sparse symmetric Gaussians of RMS
    `scale` (the sign of a learned blendshape is arbitrary, so both are drawn).
    """
    k, half = num_weights, num // 2
    out = torch.zeros(num, k)
    col = torch.randint(k, (half,), generator=generator)
    if reference is None:
        out[torch.arange(half), col] = torch.randn(half, generator=generator) * scale
        active = torch.rand(num - half, k, generator=generator) < min(1.0, 4 / k)
        out[half:] = torch.randn(num - half, k, generator=generator) * scale * active
        return out
    ref = reference.detach().float().cpu()
    rows = torch.randint(len(ref), (half,), generator=generator)
    out[torch.arange(half), col] = ref[rows, col] * torch.empty(half).uniform_(0.5, 2.0, generator=generator)
    rows = torch.randint(len(ref), (num - half, k), generator=generator)
    out[half:] = ref[rows, torch.arange(k)]
    return out


def corpus_frames(speech_root: str | Path, expression_root: str | Path, subset: str, max_frames: int,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Up to max_frames random speech and expression frames (n, V, 3) of a subset, split as in
    DFM training (blendtalk.training.dfm.load_frames); None when the corpus has no such subset."""
    from ..data.datasets import ExpressionDataset, SpeechDataset
    from ..data.florence import read_florence
    from ..data.vocaset import read_vocaset
    from ..evaluation.fusion import synthetic_split

    speech_index, expr_index = read_vocaset(speech_root), read_florence(expression_root)
    try:
        datasets = (
            SpeechDataset(speech_index.sequences, synthetic_split([s.subject for s in speech_index.sequences]),
                          subset, window=1, with_audio=False),
            ExpressionDataset(expr_index.sequences, synthetic_split([s.subject for s in expr_index.sequences]),
                              subset, window=1),
        )
    except ValueError:  # a tiny corpus may leave the subset empty
        return None
    rng = np.random.default_rng(seed)
    out = []
    for ds in datasets:
        idx = np.sort(rng.choice(len(ds), min(max_frames, len(ds)), replace=False))  # sorted: sequential memmap reads
        out.append(torch.from_numpy(ds.displacements(idx)[:, 0]))
    return out[0], out[1]


# ---------------------------------------------------------------- fitting


def _blendshapes(dfm) -> torch.Tensor:
    return dfm.blendshapes.detach().double()  # (V*3, K_s + K_e)


def _closed_form(a: torch.Tensor, b: torch.Tensor, m3: torch.Tensor, scale: float, config: MappingFitConfig) -> torch.Tensor:
    """argmin_M of the quadratic loss for a linear target a (V*3, P) and blendshapes b (V*3, K): (P, K).

    With sum_n w w^T invertible the minimiser does not depend on the weights: (s^2 (A'QA +
    lambda_reg A'A / V) + lambda_params I) M = s^2 A'QB, Q = diag(m) / sum(m).
    """
    aq = a.T * (m3 / m3.sum())  # (P, V*3)
    lhs = scale**2 * (aq @ a + config.lambda_reg * (a.T @ a) / (len(a) // 3))
    lhs = lhs + config.lambda_params * torch.eye(a.shape[1], dtype=a.dtype, device=a.device)
    return torch.linalg.solve(lhs, scale**2 * (aq @ b))


def _unit_scale(b: torch.Tensor, m3: torch.Tensor, w: torch.Tensor) -> float:
    """1 / weighted RMS vertex displacement of B w over the weights w (N, K)."""
    gbb = (b.T * (m3 / m3.sum())) @ b  # (K, K)
    ms = float(torch.einsum("nk,kl,nl->n", w.double(), gbb, w.double()).mean())
    if ms <= 0:
        raise ValueError("the fitting weights decode to no motion; nothing to fit")
    return ms**-0.5


def _masks(num_vertices: int, lips, region, lip_weight: float, device) -> tuple[torch.Tensor, np.ndarray | None, np.ndarray]:
    m = vertex_weights(num_vertices, None if lips is None else torch.as_tensor(lips), lip_weight,
                       None if region is None else torch.as_tensor(region))
    region = np.ones(num_vertices, bool) if region is None else np.asarray(region, bool)
    return m.double().to(device).repeat_interleave(3), None if lips is None else np.asarray(lips, bool), region


@torch.no_grad()
def fit_report(displacement: Displacement, mapping: Mapping, dfm, w: torch.Tensor, region: np.ndarray,
               lips: np.ndarray | None, chunk: int = 256) -> dict:
    """Errors of the target rig against the DFM on weights w (N, K_s + K_e), in mm.

    mean_mm: mean vertex error over `region` (V,) bool; lip_mm: over the lips; lve_mm2: per frame
    the max squared lip error, averaged (LVE); relative: RMS error / RMS DFM displacement over the
    region; target_mm: mean DFM displacement over the region, for scale.
    """
    b = dfm.blendshapes.detach()
    sums = {"err": 0.0, "lip": 0.0, "lve": 0.0, "sq": 0.0, "tsq": 0.0, "tgt": 0.0, "clamped": 0.0}
    reg = torch.as_tensor(region, device=b.device)
    lip = None if lips is None else torch.as_tensor(lips, device=b.device)
    for c in w.to(b).split(chunk):
        target = (c @ b.T).reshape(len(c), -1, 3)  # (n, V, 3)
        params = mapping.apply(c)
        err = (displacement(params).to(target) - target).norm(dim=-1)  # (n, V)
        sums["err"] += float(err[:, reg].mean(1).sum())
        sums["sq"] += float(err[:, reg].pow(2).mean(1).sum())
        sums["tsq"] += float(target[:, reg].pow(2).sum(-1).mean(1).sum())
        sums["tgt"] += float(target[:, reg].norm(dim=-1).mean(1).sum())
        if lip is not None:
            sums["lip"] += float(err[:, lip].mean(1).sum())
            sums["lve"] += float(err[:, lip].pow(2).amax(1).sum())
        if mapping.bounds is not None:
            raw = c @ mapping.matrix.to(c).T
            sums["clamped"] += float(((raw < mapping.bounds[0]) | (raw > mapping.bounds[1])).float().mean(1).sum())
    n = max(len(w), 1)
    out = {"frames": len(w), "mean_mm": sums["err"] / n * MM_PER_M, "target_mm": sums["tgt"] / n * MM_PER_M,
           "relative": math.sqrt(sums["sq"] / max(sums["tsq"], 1e-30))}
    if lips is not None:
        out |= {"lip_mm": sums["lip"] / n * MM_PER_M, "lve_mm2": sums["lve"] / n * MM_PER_M**2}
    if mapping.bounds is not None:
        out["clamped_fraction"] = sums["clamped"] / n
    return out


def _adam(m_tilde: torch.Tensor, loss_fn: Callable[[torch.Tensor, int], torch.Tensor], config: MappingFitConfig,
          desc: str, progress: bool) -> torch.Tensor:
    """Minimise loss_fn(M~, step) over the scale-free map M~ (P, K) with Adam and a cosine decay."""
    m_tilde = m_tilde.clone().float().requires_grad_(True)
    opt = torch.optim.Adam([m_tilde], lr=config.lr)
    for step in tqdm(range(config.steps), desc=desc, disable=not progress, unit="step"):
        for group in opt.param_groups:
            group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * step / config.steps))
        loss = loss_fn(m_tilde, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return m_tilde.detach()


def _check_topology(dfm, v: int, need: str, other: str, other_dfm: str) -> None:
    """ValueError unless the DFM was trained on V = v vertices, naming the --target that fits it."""
    if dfm.config.num_vertices != v:
        raise ValueError(f"{need} (V={v}); this DFM has V={dfm.config.num_vertices} (use --target {other} for {other_dfm})")


def fit_arkit_mapping(dfm, rig, train_weights: torch.Tensor, eval_weights: torch.Tensor,
                      config: MappingFitConfig | None = None, progress: bool = False,
                      also_score: dict[str, torch.Tensor] | None = None) -> ArkitMapping:
    """Fit DFM weights -> ARKit weights on `rig` (a FaceRig on the DFM's topology).

    train_weights (N, K_s + K_e): observed + sampled weights; eval_weights (N', K_s + K_e): held
    out, scored as info['metrics']['heldout']; also_score: more named weight sets to score.
    """
    config = config or MappingFitConfig()
    v = rig.num_vertices
    _check_topology(dfm, v, "an ARKit mapping needs a DFM trained on the face rig's topology", "flame", "a FLAME-topology DFM")
    dev = dfm.blendshape_weight.device
    crop = rig.mask("face_crop") if config.crop_loss else None
    m3, lips, region = _masks(v, rig.masks.get("lips"), crop, config.lip_weight, dev)
    a = torch.as_tensor(rig.deltas, dtype=torch.float64, device=dev).reshape(rig.num_blendshapes, -1).T  # (V*3, 52)
    b = _blendshapes(dfm)
    w = train_weights.to(dev).double()
    s = _unit_scale(b, m3, w)
    m0 = _closed_form(a, b, m3, s, config)  # (52, K)
    names = rig.blendshape_names
    closed = ArkitMapping("arkit", m0.float(), names, dfm.config.k_speech)
    matrix = m0.float()
    bounds = ARKIT_BOUNDS if config.bounded else None
    if config.bounded and config.steps > 0:
        # The loss is quadratic in p, so with Gram matrices a step costs O(N P^2), not O(N V).
        # Unit scale: s^2 |A p - B w|^2_Q = s^2 p'Gp - 2 s p'A'QB (s w) + (s w)'B'QB (s w).
        q = m3 / m3.sum()
        gaa = (s**2 * ((a.T * q) @ a + config.lambda_reg * (a.T @ a) / v)).float()
        gab = (s * (a.T * q) @ b).float()
        gbb = ((b.T * q) @ b).float()
        ws = (w * s).float()  # (N, K) unit-scale weights
        const = torch.einsum("nk,kl,nl->n", ws, gbb, ws).mean()

        def loss(mt, _step):
            p = (ws @ mt.T).clamp(*ARKIT_BOUNDS)  # (N, 52)
            fit = (p @ gaa * p).sum(1).mean() - 2 * (p @ gab * ws).sum(1).mean() + const
            return fit + config.lambda_params * p.pow(2).sum(1).mean()

        matrix = _adam(m0.float() / s, loss, config, "fit arkit", progress) * s
    mapping = ArkitMapping("arkit", matrix, names, dfm.config.k_speech, bounds)
    disp = rig.displacement
    mapping.info = {
        "fit": asdict(config), "unit_scale": s, "region": "face_crop" if config.crop_loss else "all",
        "metrics": {
            "heldout": fit_report(disp, mapping, dfm, eval_weights, region, lips),
            **{name: fit_report(disp, mapping, dfm, w, region, lips) for name, w in (also_score or {}).items()},
            "closed_form_unbounded_heldout": fit_report(disp, closed, dfm, eval_weights, region, lips),
            "closed_form_clamped_heldout": fit_report(
                disp, ArkitMapping("arkit", m0.float(), names, dfm.config.k_speech, ARKIT_BOUNDS), dfm, eval_weights, region, lips),
        },
    }
    return mapping


def flame_displacement(flame) -> Displacement:
    """params (..., n_expr + 3) = [expr | jaw_pose] -> FLAME displacement (..., V, 3)."""
    return lambda p: flame.displacement(expr=p[..., :-3], jaw_pose=p[..., -3:])


@torch.no_grad()
def flame_linearization(flame) -> torch.Tensor:
    """d displacement / d [expr | jaw_pose] at the neutral pose: (V*3, n_expr + 3).

    Expressions are linear; the jaw column block is a central difference of step JAW_STEP.
    """
    expr = flame.exprdirs.double().reshape(-1, flame.num_expression)  # (V*3, n_expr)
    steps = torch.eye(3, dtype=flame.v_template.dtype, device=flame.v_template.device) * JAW_STEP
    jac = (flame.displacement(jaw_pose=steps) - flame.displacement(jaw_pose=-steps)) / (2 * JAW_STEP)  # (3, V, 3)
    return torch.cat([expr, jac.double().reshape(3, -1).T], dim=1)


def fit_flame_mapping(dfm, flame, train_weights: torch.Tensor, eval_weights: torch.Tensor,
                      config: MappingFitConfig | None = None, lips: np.ndarray | None = None,
                      region: np.ndarray | None = None, progress: bool = False,
                      also_score: dict[str, torch.Tensor] | None = None) -> FlameMapping:
    """Fit DFM weights -> FLAME [expr (n) | jaw_pose (3)] for a `FlameModel` on the DFM's topology.

    lips, region: optional (V,) bool masks (FLAME_masks.pkl 'lips', 'face'): lip weighting and the
    region the mean error is scored on (all vertices when None). Weights as in fit_arkit_mapping.
    """
    config = config or MappingFitConfig()
    v = flame.num_vertices
    _check_topology(dfm, v, "a FLAME mapping needs a DFM trained on FLAME-topology data", "arkit", "a DFM on the face rig")
    dev = dfm.blendshape_weight.device
    flame = flame.to(dev)
    m3, lips, region_mask = _masks(v, lips, None, config.lip_weight, dev)
    region_mask = region_mask if region is None else np.asarray(region, bool)
    b = _blendshapes(dfm)
    w = train_weights.to(dev).double()
    s = _unit_scale(b, m3, w)
    m0 = _closed_form(flame_linearization(flame), b, m3, s, config)  # (n + 3, K)
    names = tuple(f"expr_{i:03d}" for i in range(flame.num_expression)) + JAW_NAMES
    disp = flame_displacement(flame)
    closed = FlameMapping("flame", m0.float(), names, dfm.config.k_speech)
    matrix = m0.float()
    if config.steps > 0:
        bf, ws = b.float(), (w * s).float()
        m = m3.float().reshape(v, 3)[:, 0]
        gen = torch.Generator().manual_seed(config.seed)

        def loss(mt, _step):
            batch = ws[torch.randint(len(ws), (min(config.batch_size, len(ws)),), generator=gen).to(dev)]
            p = batch @ mt.T  # (B, n + 3)
            target = (batch @ bf.T).reshape(len(batch), v, 3)  # already unit scale
            pred = disp(p) * s
            fit = ((pred - target).pow(2).sum(-1) * m).sum(1).mean() / m.sum()
            reg = pred.pow(2).sum(-1).mean()
            return fit + config.lambda_reg * reg + config.lambda_params * p.pow(2).sum(1).mean()

        matrix = _adam(m0.float() / s, loss, config, "fit flame", progress) * s
    mapping = FlameMapping("flame", matrix, names, dfm.config.k_speech)
    mapping.info = {
        "fit": asdict(config), "unit_scale": s, "region": "all" if region is None else "given",
        "num_expression": flame.num_expression,
        "metrics": {
            "heldout": fit_report(disp, mapping, dfm, eval_weights, region_mask, lips),
            **{name: fit_report(disp, mapping, dfm, w, region_mask, lips) for name, w in (also_score or {}).items()},
            "linearized_closed_form_heldout": fit_report(disp, closed, dfm, eval_weights, region_mask, lips),
        },
    }
    return mapping
