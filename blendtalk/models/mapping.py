"""Linear maps from the DFM's blendshape weights to other rigs' parameters (paper eqs. 14-15).

A map M (P, K_s + K_e) turns DFM weights w into target parameters p = M w, fitted so that the
target rig reproduces the DFM's deformation (the loss and the fitting: blendtalk.training.mapping).

* ARKit (the shipped rig, t(p) = deltas^T p): the loss is quadratic, so M has a closed form,
  the same whatever the weight distribution (it is the per-blendshape least-squares fit). ARKit
  weights live in [0, 1]; a linear map cannot keep them there for all w, so by default M is then
  refined (Adam, from the closed form) on the weights an avatar receives, clamp(M w, 0, 1), over
  the observed and sampled w. Done on 52x52 Gram matrices, it costs no vertex evaluations.
* FLAME (expression coefficients + jaw pose): the jaw rotates vertices, so t is nonlinear. We
  linearise FLAME at the neutral pose (expression basis + the jaw's Jacobian by central
  differences), solve that in closed form, then refine with Adam through the true FLAME layer.
  A FLAME map needs a DFM trained on FLAME-topology data (V = 5023).

A fitted map is a folder beside the DFM checkpoint, `<dfm>/mapping_<target>/` (config.json with
the fit's held-out errors + model.safetensors + README.md, written like every checkpoint by
blendtalk.models.checkpoint.save_folder), read back by `load_mapping(dfm_dir, target)`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from .checkpoint import file_sha256, save_folder
from .loading import CONFIG_NAME, WEIGHTS_NAME

TARGETS = ("arkit", "flame")
MODEL_TYPE = "blendtalk-mapping"
ARKIT_BOUNDS = (0.0, 1.0)  # ARKit blendshape weights are fractions of each unit
JAW_NAMES = ("jaw_pose_x", "jaw_pose_y", "jaw_pose_z")


# ---------------------------------------------------------------- the map


@dataclass(eq=False)
class Mapping:
    """p = M w, optionally clamped to `bounds`. matrix: (P, K_s + K_e); param_names: P names."""

    target: str
    matrix: torch.Tensor
    param_names: tuple[str, ...]
    k_speech: int
    bounds: tuple[float, float] | None = None
    info: dict = field(default_factory=dict)  # fit config, held-out errors, provenance

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        m = self.matrix
        if m.ndim != 2 or m.shape[0] != len(self.param_names) or not 0 < self.k_speech < m.shape[1]:
            raise ValueError(f"matrix must be (P={len(self.param_names)}, K_s + K_e) with K_s={self.k_speech}, got {tuple(m.shape)}")
        self.param_names = tuple(self.param_names)

    @property
    def num_params(self) -> int:
        return self.matrix.shape[0]

    @property
    def num_weights(self) -> int:
        """K_s + K_e."""
        return self.matrix.shape[1]

    def apply(self, w):
        """DFM weights (..., K_s + K_e) -> target parameters (..., P); numpy in, numpy out."""
        is_np = not isinstance(w, torch.Tensor)
        t = torch.as_tensor(np.asarray(w, dtype=np.float32) if is_np else w)
        if t.ndim == 0 or t.shape[-1] != self.num_weights:
            raise ValueError(f"DFM weights must have shape (..., K_s + K_e = {self.num_weights}), got {tuple(t.shape)}")
        p = t @ self.matrix.to(t).T  # (..., P)
        if self.bounds is not None:
            p = p.clamp(*self.bounds)
        return p.numpy() if is_np else p


class ArkitMapping(Mapping):
    """DFM weights -> the 52 ARKit weights of the shipped rig, in [0, 1] when fitted bounded."""

    def arkit_weights(self, w):
        """(T, K_s + K_e) -> (T, 52), named by `param_names` (the rig's blendshape names)."""
        return self.apply(w)

    def with_expression_units(self, w_speech, units):
        """Speech weights (T, K_s) and an expression given as the rig's own units (T, 52) -> (T, 52).

        An emotion label is made of these 52 units, so its weights are the expression exactly; the
        fitted map redraws them through the DFM's expression weights and loses much of a prototype
        (the live page's face read as angry 3% of the time against the video's 84%). The speech
        half is still mapped. numpy in, numpy out."""
        is_np = not isinstance(w_speech, torch.Tensor)
        s = torch.as_tensor(np.asarray(w_speech, dtype=np.float32) if is_np else w_speech)
        u = (units if isinstance(units, torch.Tensor) else torch.as_tensor(np.asarray(units, dtype=np.float32))).to(s)
        if s.shape[-1] != self.k_speech or u.shape[-1] != self.num_params or s.shape[:-1] != u.shape[:-1]:
            raise ValueError(f"speech weights (..., {self.k_speech}) and units (..., {self.num_params}) with the same "
                             f"leading shape expected, got {tuple(s.shape)} and {tuple(u.shape)}")
        p = s @ self.matrix[:, :self.k_speech].to(s).T + u  # (..., 52)
        if self.bounds is not None:
            p = p.clamp(*self.bounds)
        return p.numpy() if is_np else p


class FlameMapping(Mapping):
    """DFM weights -> FLAME expression coefficients and jaw pose (axis-angle, radians)."""

    @property
    def num_expression(self) -> int:
        return self.num_params - 3

    def flame_params(self, w) -> dict:
        """(T, K_s + K_e) -> {'expr': (T, n), 'jaw_pose': (T, 3)} (numpy or torch, like w)."""
        p = self.apply(w)
        return {"expr": p[..., :-3], "jaw_pose": p[..., -3:]}


_CLASSES = {"arkit": ArkitMapping, "flame": FlameMapping}


# ---------------------------------------------------------------- storage


def mapping_dir(dfm_dir: str | Path, target: str) -> Path:
    """Where the map for `target` of the DFM checkpoint in dfm_dir lives: <dfm_dir>/mapping_<target>."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    return Path(dfm_dir) / f"mapping_{target}"


def save_mapping(mapping: Mapping, folder: str | Path, dfm_dir: str | Path | None = None) -> Path:
    """Write config.json (target, names, bounds, fit info and errors) + model.safetensors ('matrix')
    + README.md, atomically (`save_folder`).

    dfm_dir: the DFM checkpoint the map was fitted to; its weights' sha256 is recorded so that a
    map is never applied to a retrained DFM by mistake.
    """
    config = {"model_type": MODEL_TYPE, "target": mapping.target, "param_names": list(mapping.param_names),
              "k_speech": mapping.k_speech, "k_total": mapping.num_weights,
              "bounds": None if mapping.bounds is None else list(mapping.bounds), "info": mapping.info}
    if dfm_dir is not None and (Path(dfm_dir) / WEIGHTS_NAME).is_file():
        config["dfm_weights_sha256"] = file_sha256(Path(dfm_dir) / WEIGHTS_NAME)
    held = mapping.info.get("metrics", {}).get("heldout", {})
    card = (f"# blendtalk rig map: DFM weights -> {mapping.target}\n\n{mapping.num_params} parameters from "
            f"{mapping.num_weights} DFM weights. Held-out error: {held.get('mean_mm', float('nan')):.3f} mm mean, "
            f"{held.get('lip_mm', float('nan')):.3f} mm on the lips.\n"
            "Load with `blendtalk.models.mapping.load_mapping(dfm_dir, target)`.\n")
    return save_folder(folder, config, {"matrix": mapping.matrix.float()}, card,
                       {"model_type": MODEL_TYPE, "target": mapping.target})


def load_mapping(dfm_dir: str | Path, target: str, device: str | torch.device | None = None,
                 check_dfm: bool = True) -> Mapping:
    """Read <dfm_dir>/mapping_<target> (an ArkitMapping or FlameMapping), strictly.

    check_dfm: refuse a map fitted to other DFM weights than <dfm_dir>/model.safetensors.
    """
    folder = mapping_dir(dfm_dir, target)
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"no {target} mapping for {dfm_dir}: {path} is missing; fit one with "
                                    f"python train/fit_mapping.py --dfm {dfm_dir} --target {target}")
    raw = json.loads(config_path.read_text())
    if raw.get("model_type") != MODEL_TYPE or raw.get("target") != target:
        raise ValueError(f"{config_path} is not a {MODEL_TYPE} config for target {target!r}")
    dfm_weights = Path(dfm_dir) / WEIGHTS_NAME
    if check_dfm and "dfm_weights_sha256" in raw and dfm_weights.is_file() \
            and file_sha256(dfm_weights) != raw["dfm_weights_sha256"]:
        raise ValueError(f"{folder} was fitted to other DFM weights than {dfm_weights} (the DFM was retrained); "
                         f"refit with python train/fit_mapping.py --dfm {dfm_dir} --target {target} --overwrite")
    state = load_file(weights_path)
    if set(state) != {"matrix"}:
        raise ValueError(f"{weights_path} must hold exactly one tensor 'matrix', got {sorted(state)}")
    matrix = state["matrix"] if device is None else state["matrix"].to(device)
    if tuple(matrix.shape) != (len(raw["param_names"]), raw["k_total"]):
        raise ValueError(f"{weights_path}: matrix {tuple(matrix.shape)} does not match {config_path}")
    bounds = None if raw.get("bounds") is None else tuple(raw["bounds"])
    return _CLASSES[target](target, matrix, tuple(raw["param_names"]), raw["k_speech"], bounds, raw.get("info", {}))
