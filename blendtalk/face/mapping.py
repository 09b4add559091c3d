"""Linear maps from the DFM's blendshape weights to other rigs' parameters (paper eqs. 14-15).

A map M (P, K_s + K_e) turns DFM weights w into target parameters p = M w, fitted so that the
target rig reproduces the DFM's deformation:

    L = L_fit + lambda_reg L_reg + lambda_params |p|^2
    L_fit = sum_v m_v |t(M w)_v - ([B_s B_e] w)_v|^2 / sum_v m_v      (m_v: lips weighted, as in DFM training)
    L_reg = mean_v |t(M w)_v|^2                                      (L2 on the output deformation)

averaged over weight vectors w observed on the corpora (DFM-encoded training frames, combined
as at inference: speech own half + intensity * expression own half) plus sampled ones. Lengths
are multiplied by a unit scale (1 / weighted RMS target displacement) so the lambdas are relative.

* ARKit (the shipped rig, t(p) = deltas^T p): the loss is quadratic, so M has a closed form,
  the same whatever the weight distribution (it is the per-blendshape least-squares fit). ARKit
  weights live in [0, 1]; a linear map cannot keep them there for all w, so by default M is then
  refined (Adam, from the closed form) on the weights an avatar receives, clamp(M w, 0, 1), over
  the observed and sampled w. Done on 52x52 Gram matrices, it costs no vertex evaluations.
* FLAME (expression coefficients + jaw pose): the jaw rotates vertices, so t is nonlinear. We
  linearise FLAME at the neutral pose (expression basis + the jaw's Jacobian by central
  differences), solve that in closed form, then refine with Adam through the true FLAME layer.
  A FLAME map needs a DFM trained on FLAME-topology data (V = 5023).

The fitting lives in blendtalk.training.mapping; this module holds the map and its storage.
A fitted map is a folder beside the DFM checkpoint, `<dfm>/mapping_<target>/` (config.json with
the fit's held-out errors + model.safetensors), read back by `load_mapping(dfm_dir, target)`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

TARGETS = ("arkit", "flame")
MODEL_TYPE = "blendtalk-mapping"
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
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


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_mapping(mapping: Mapping, folder: str | Path, dfm_dir: str | Path | None = None) -> Path:
    """Write config.json (target, names, bounds, fit info and errors) + model.safetensors ('matrix').

    dfm_dir: the DFM checkpoint the map was fitted to; its weights' sha256 is recorded so that a
    map is never applied to a retrained DFM by mistake.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_type": MODEL_TYPE, "target": mapping.target, "param_names": list(mapping.param_names),
              "k_speech": mapping.k_speech, "k_total": mapping.num_weights,
              "bounds": None if mapping.bounds is None else list(mapping.bounds), "info": mapping.info}
    if dfm_dir is not None and (Path(dfm_dir) / WEIGHTS_NAME).is_file():
        config["dfm_weights_sha256"] = file_sha256(Path(dfm_dir) / WEIGHTS_NAME)
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    save_file({"matrix": mapping.matrix.detach().float().contiguous().cpu()}, folder / WEIGHTS_NAME,
              metadata={"format": "pt", "model_type": MODEL_TYPE, "target": mapping.target})
    held = mapping.info.get("metrics", {}).get("heldout", {})
    (folder / "README.md").write_text(
        f"# blendtalk rig map: DFM weights -> {mapping.target}\n\n{mapping.num_params} parameters from "
        f"{mapping.num_weights} DFM weights. Held-out error: {held.get('mean_mm', float('nan')):.3f} mm mean, "
        f"{held.get('lip_mm', float('nan')):.3f} mm on the lips.\n"
        "Load with `blendtalk.face.mapping.load_mapping(dfm_dir, target)`.\n")
    return folder


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
