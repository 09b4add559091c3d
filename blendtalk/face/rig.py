"""The face rig: neutral template, triangles, ARKit-named blendshape deltas and region masks.

The embedded default is the CC0 MakeHuman head with its 52 ARKit face units (see
`tools/build_face_rig.py` and `assets/LICENSE-face-rig.md`). Units are metres; +x is the face's
left, +y up, +z out of the face.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..constants import FACE_RIG_PATH

REGIONS = ("lips", "mouth", "eyes", "upper_face", "face_crop")
_DRESSING_PREFIXES = ("dressing_", "face_brow", "face_hair", "eye_")  # asset keys that dress the face, not the rig


@dataclass(frozen=True, eq=False)
class FaceRig:
    """A linear blendshape face rig on one topology.

    vertices: (V, 3) neutral template. triangles: (F, 3) int. deltas: (52, V, 3) per-unit offsets.
    masks: region name -> (V,) bool. lip_pairs: (P, 2) [upper, lower] lip-seam vertex pairs.
    mirror: (V,) index of each vertex's left-right mirror partner. dressing: the asset's extra
    arrays for `blendtalk.face.dressing.FaceDressing` (helper meshes, eyeballs, painted brows), or None.
    """

    vertices: np.ndarray
    triangles: np.ndarray
    blendshape_names: tuple[str, ...]
    deltas: np.ndarray
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    lip_pairs: np.ndarray | None = None
    mirror: np.ndarray | None = None
    name: str = "rig"
    dressing: dict[str, np.ndarray] | None = None

    def __post_init__(self):
        v, f = self.vertices, self.triangles
        if v.ndim != 2 or v.shape[1] != 3:
            raise ValueError(f"rig vertices must have shape (V, 3), got {v.shape}")
        if f.ndim != 2 or f.shape[1] != 3 or f.min() < 0 or f.max() >= len(v):
            raise ValueError(f"rig triangles must be (F, 3) indices below V={len(v)}, got shape {f.shape}")
        if self.deltas.shape != (len(self.blendshape_names), len(v), 3):
            raise ValueError(
                f"rig deltas must have shape ({len(self.blendshape_names)}, {len(v)}, 3), got {self.deltas.shape}"
            )

    @property
    def num_vertices(self) -> int:
        return len(self.vertices)

    @property
    def num_blendshapes(self) -> int:
        return len(self.blendshape_names)

    def index(self, name: str) -> int:
        """Column of blendshape `name`; unknown names raise a ValueError listing the valid ones."""
        try:
            return self.blendshape_names.index(name)
        except ValueError:
            raise ValueError(
                f"unknown blendshape {name!r}; valid names: {', '.join(self.blendshape_names)}"
            ) from None

    def weights(self, named: dict[str, float]) -> np.ndarray:
        """A dense weight vector (52,) from a {name: weight} dict."""
        w = np.zeros(self.num_blendshapes, dtype=np.float32)
        for name, value in named.items():
            w[self.index(name)] = value
        return w

    def displacement(self, weights):
        """Blendshape weights (..., 52) -> per-vertex displacement (..., V, 3); numpy or torch."""
        self._check_weights(weights)
        if isinstance(weights, torch.Tensor):
            deltas = torch.as_tensor(self.deltas, dtype=weights.dtype, device=weights.device)
            return torch.einsum("...k,kvc->...vc", weights, deltas)
        w = np.asarray(weights, dtype=np.float32)
        k, v, _ = self.deltas.shape
        return (w @ self.deltas.reshape(k, v * 3)).reshape(*w.shape[:-1], v, 3)  # BLAS: 4x np.einsum's speed

    def __call__(self, weights):
        """Blendshape weights (..., 52) -> vertices (..., V, 3); numpy or torch."""
        d = self.displacement(weights)
        if isinstance(d, torch.Tensor):
            return d + torch.as_tensor(self.vertices, dtype=d.dtype, device=d.device)
        return d + self.vertices

    def mask(self, region: str) -> np.ndarray:
        """(V,) bool mask of a named region (one of REGIONS)."""
        if region not in self.masks:
            raise ValueError(f"unknown region {region!r}; this rig has: {', '.join(sorted(self.masks))}")
        return self.masks[region]

    def lip_gap(self, vertices):
        """Vertical lip opening relative to the neutral (closed) pose, in metres.

        vertices: (..., V, 3) -> (...). Mean over the lip-seam pairs of the upper-minus-lower
        height, minus the same in the template, clamped at 0: 0 means the lips touch as at rest.
        """
        if self.lip_pairs is None:
            raise ValueError(f"rig {self.name!r} has no lip pairs")
        up, lo = self.lip_pairs[:, 0], self.lip_pairs[:, 1]
        rest = float((self.vertices[up, 1] - self.vertices[lo, 1]).mean())
        opening = (vertices[..., up, 1] - vertices[..., lo, 1]).mean(-1) - rest
        return opening.clamp(min=0) if isinstance(opening, torch.Tensor) else np.maximum(opening, 0)

    def _check_weights(self, weights) -> None:
        shape = tuple(weights.shape)
        if len(shape) == 0 or shape[-1] != self.num_blendshapes:
            raise ValueError(f"blendshape weights must have shape (..., {self.num_blendshapes}), got {shape}")
        finite = torch.isfinite(weights).all() if isinstance(weights, torch.Tensor) else np.isfinite(weights).all()
        if not finite:
            raise ValueError("blendshape weights contain NaN or infinite values")


def load_rig(path: str | Path = FACE_RIG_PATH) -> FaceRig:
    """Load a rig asset (`.npz` written by tools/build_face_rig.py); no pickle, no network."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"face rig asset not found: {path} (rebuild it with tools/build_face_rig.py)")
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    return FaceRig(
        vertices=data["vertices"],
        triangles=data["triangles"].astype(np.int64),
        blendshape_names=tuple(str(n) for n in data["blendshape_names"]),
        deltas=data["blendshape_deltas"],
        masks={k.removeprefix("mask_"): data[k] for k in data if k.startswith("mask_")},
        lip_pairs=data["lip_pairs"].astype(np.int64),
        mirror=data["mirror"].astype(np.int64),
        name=path.stem,
        dressing={k: data[k] for k in data if k.startswith(_DRESSING_PREFIXES)} or None,
    )
