"""Dynamic wrinkles: fine skin lines where the animation compresses the skin.

Real skin folds into lines across the direction it is squeezed: raised brows crowd the forehead into
horizontal lines, knitted brows pinch vertical lines between them, a nose wrinkle (AU9) folds the
bridge, a cheek raise (AU6) bunches the skin under the eyes. Production rigs paint wrinkle maps and
fade them in per blendshape; this rig has no texture, so the lines come from the motion itself:
each frame measures how much every vertex's edges shortened against the rest pose, split into the
face's vertical and horizontal directions, and the shader draws a periodic line pattern in rest-pose
coordinates (so the lines ride on the skin) whose depth follows that compression. Nothing is drawn
where the skin is at rest or stretched, so speech alone (a stretched chin, an open jaw) stays smooth.

Per vertex the renderer carries four numbers (`Wrinkles.attributes`): the rest-pose line phase
across (u) and along (v) the face, and the amounts of vertical and horizontal lines. Both the torch
rasterizer (`darkening`) and the OpenGL shader (`GLSL`) turn them into the same albedo factor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class WrinkleConfig:
    """How deep and how far apart the lines are. Lengths in the rig's units (metres)."""

    strength: float = 0.35  # albedo darkening at the centre of a fully formed line, 0 turns wrinkles off
    spacing: float = 0.0085  # m between neighbouring lines, about what adult foreheads show
    # Share of shortening at which [vertical, horizontal] lines start to show and are fully formed.
    # Knitting the brows squeezes the glabella hard (0.3-0.6 of its width), while raising them
    # squeezes it a little (0.1) and must not draw the knitted brows' lines; the forehead bunches less.
    onset: tuple[float, float] = (0.12, 0.02)
    full: tuple[float, float] = (0.30, 0.15)
    sharpness: float = 4.0  # exponent of the raised cosine: higher is thinner lines
    spread: int = 6  # rings over which the squeeze spreads from where the rig bunches the skin
    arch: float = 3.0  # 1/m: lines bend down toward the temples as a brow does (y + arch * x^2)


# The same line pattern, written for the fragment shader (`render.gl`); keep it identical to `darkening`.
GLSL = """
uniform vec2 wrinkle_shape;  // strength, sharpness
float wrinkle_factor(vec4 w) {
    // w: phase across (u) and along (v) the face in line periods, amounts of vertical and horizontal lines
    float across = wrinkle_sharpen(0.5 + 0.5 * cos(6.283185307 * w.x));  // x ** sharpness, `render.gl` defines it
    float along = wrinkle_sharpen(0.5 + 0.5 * cos(6.283185307 * w.y));
    return max(1.0 - wrinkle_shape.x * (w.z * across + w.w * along), 0.0);
}
"""


def darkening(wrinkle: torch.Tensor, config: WrinkleConfig) -> torch.Tensor:
    """Interpolated wrinkle attributes (M, 4) [u, v, vertical amount, horizontal amount] -> albedo
    factor (M,) in [0, 1]: 1 where there is no line."""
    across = (0.5 + 0.5 * torch.cos(2 * math.pi * wrinkle[:, 0])).pow(config.sharpness)
    along = (0.5 + 0.5 * torch.cos(2 * math.pi * wrinkle[:, 1])).pow(config.sharpness)
    return (1 - config.strength * (wrinkle[:, 2] * across + wrinkle[:, 3] * along)).clamp(min=0)


class Wrinkles:
    """Per-frame wrinkle attributes of one face.

    rest: (V, 3) template, +y up and +x across the face (the rig's frame). triangles: (F, 3).
    mask: (V, 2) in [0, 1], where skin shows [vertical, horizontal] lines (`line_masks`).
    """

    def __init__(self, rest: torch.Tensor, triangles: torch.Tensor, mask: torch.Tensor, config: WrinkleConfig):
        rest = torch.as_tensor(rest, dtype=torch.float32)
        tri = torch.as_tensor(triangles).long().to(rest.device)
        mask = torch.as_tensor(mask, dtype=torch.float32, device=rest.device)
        self.config = config
        self.num_vertices = len(rest)
        edges = torch.cat([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]]).sort(1).values.unique(dim=0)  # (E, 2)
        # Only skin within `spread` rings of a zone can reach a line, so only its edges are measured:
        # a quarter of the face's, which keeps the per-frame cost to a few tenths of a millisecond.
        near = mask.amax(1) > 0
        for _ in range(config.spread):
            near = near.clone().index_fill_(0, edges[near[edges[:, 0]], 1], True).index_fill_(0, edges[near[edges[:, 1]], 0], True)
        edges = edges[near[edges[:, 0]] | near[edges[:, 1]]]
        self.vertices, edges = edges.reshape(-1).unique(return_inverse=True)  # (R,) face indices, (E, 2) local
        self.edges = edges = edges.reshape(-1, 2)
        vec = rest[self.vertices][edges[:, 1]] - rest[self.vertices][edges[:, 0]]  # (E, 3)
        self.rest_length = vec.norm(dim=-1).clamp(min=1e-12)  # (E,)
        # An edge's share in each direction: squeezing a vertical edge makes horizontal lines.
        self.share = (vec[:, :2] / self.rest_length[:, None]) ** 2  # (E, 2) [x share, y share]
        count = len(self.vertices)
        ends = torch.cat([edges[:, 0], edges[:, 1]])  # (2E,) each edge at both its vertices
        dev = rest.device  # a renderer on CUDA keeps all of it there
        ids = torch.arange(len(edges), device=dev).repeat(2)
        total = torch.zeros(count, 2, device=dev).index_add_(0, ends, self.share.repeat(2, 1)).clamp(min=1e-6)  # (R, 2)
        # As sparse operators (vertex-major, frames along the columns: several times faster than
        # index_add_ over a frame-major layout): each direction's share-weighted mean of a vertex's
        # edges' shortening, (R, E) each, and the mean over a vertex's neighbours, (R, R).
        self.to_vertex = [_sparse(ends, ids, self.share.repeat(2, 1)[:, k] / total[ends, k], (count, len(edges)))
                          for k in range(2)]
        degree = torch.bincount(ends, minlength=count).clamp(min=1).float()
        self.ring_mean = _sparse(ends, torch.cat([edges[:, 1], edges[:, 0]]), 1 / degree[ends], (count, count))
        self.mask = mask[self.vertices]  # (R, 2)
        self.onset, self.full = (torch.tensor(v, device=dev) for v in (config.onset, config.full))
        x, y = rest[:, 0], rest[:, 1]
        x = x - float((x.amin() + x.amax()) / 2)
        # Vertical lines sit either side of the midline (the "11" between knitted brows), not on it.
        self.phase = torch.stack([x / config.spacing + 0.5, (y + config.arch * x * x) / config.spacing], -1)  # (V, 2)

    def amounts(self, vertices: torch.Tensor) -> torch.Tensor:
        """Face vertices (T, V, 3) -> (T, V, 2) amounts in [0, 1] of [vertical lines, horizontal lines]."""
        e, t_count = self.edges, vertices.shape[0]
        local = vertices[:, self.vertices.to(vertices.device)].transpose(0, 1)  # (R, T, 3)
        length = (local[e[:, 1]] - local[e[:, 0]]).norm(dim=-1)  # (E, T)
        squeeze = (1 - length / self.rest_length[:, None]).clamp(min=0)  # (E, T) shortening, 0 when stretched
        squeezed = torch.cat([torch.sparse.mm(op, squeeze) for op in self.to_vertex], 1)  # (R, 2T): along x, along y
        # A muscle squeezes the skin over its whole belly, while the rig's units bunch it near the
        # features they move: spread the squeeze a few rings (the frontalis lines the whole forehead).
        for _ in range(self.config.spread):
            squeezed = torch.maximum(squeezed, torch.sparse.mm(self.ring_mean, squeezed))
        squeezed = squeezed.reshape(-1, 2, t_count).permute(2, 0, 1)  # (T, R, 2)
        ramp = ((squeezed - self.onset) / (self.full - self.onset)).clamp(0, 1)
        ramp = ramp * ramp * (3 - 2 * ramp)  # smoothstep: lines fade in, never pop
        # Squeezed along x -> vertical lines; along y -> horizontal lines.
        out = torch.zeros(t_count, self.num_vertices, 2, device=vertices.device)
        out[:, self.vertices] = ramp * self.mask
        return out

    def attributes(self, vertices: torch.Tensor, total_vertices: int) -> torch.Tensor:
        """Face vertices (T, V, 3) -> (T, total_vertices, 4) [u, v, vertical, horizontal]; the
        vertices after the face's (attached parts: teeth, eyes, hair) never wrinkle."""
        t_count = vertices.shape[0]
        out = torch.zeros(t_count, total_vertices, 4, device=vertices.device)
        out[:, : self.num_vertices, :2] = self.phase
        out[:, : self.num_vertices, 2:] = self.amounts(vertices)
        return out


def _sparse(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A sparse (COO) matrix of `shape` with `values` at (rows, cols); repeated entries add up."""
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values.float(), shape, check_invariants=False).coalesce()


def _band(value: np.ndarray, low: float, high: float, soft: float) -> np.ndarray:
    """1 inside [low, high], easing to 0 over `soft` outside it (smoothstep edges)."""
    a = np.clip((value - (low - soft)) / soft, 0, 1)
    b = np.clip(((high + soft) - value) / soft, 0, 1)
    return (a * a * (3 - 2 * a)) * (b * b * (3 - 2 * b))


def line_masks(rig) -> np.ndarray:
    """(V, 2) in [0, 1]: where a dressed rig's skin shows [vertical, horizontal] lines. Where faces
    do: horizontal lines across the forehead above the brows and over the root of the nose,
    vertical lines in the glabella between the brows. The cheeks, mouth and chin fold in broad
    creases (the nasolabial fold, which the crease shading draws), not in fine lines, and the lips
    and lids fold their own way."""
    x, y = rig.vertices[:, 0].astype(np.float64), rig.vertices[:, 1].astype(np.float64)
    eyes = np.asarray(rig.dressing["eye_centres"], dtype=np.float64)  # (2, 3)
    eye_y, half_span = float(eyes[:, 1].mean()), float(abs(eyes[0, 0] - eyes[1, 0]) / 2)
    x = x - float(eyes[:, 0].mean())
    brow = np.asarray(rig.dressing["face_brow"]) > 0.5
    brow_top = float(rig.vertices[brow, 1].max()) if brow.any() else eye_y + 0.7 * half_span
    skin = np.ones(len(x))
    if "lips" in rig.masks:
        skin[np.asarray(rig.masks["lips"])] = 0.0
    radius = float(np.asarray(rig.dressing["eye_radius"]).max())
    for centre in eyes:  # the lids: an ellipse over each eyeball (the rig's "eyes" region spans the nose root too)
        lid = ((rig.vertices[:, 0] - centre[0]) / (1.45 * radius)) ** 2 + ((rig.vertices[:, 1] - centre[1]) / (0.95 * radius)) ** 2
        skin = np.minimum(skin, np.clip((lid - 1.0) / 0.6, 0, 1))
    u = half_span  # the inter-ocular half distance sets the scale of every zone
    forehead = _band(y, brow_top + 0.15 * u, 10.0, 0.3 * u) * _band(x, -1.9 * u, 1.9 * u, 0.4 * u)
    nose_root = _band(y, eye_y - 0.35 * u, eye_y + 0.35 * u, 0.2 * u) * _band(x, -0.35 * u, 0.35 * u, 0.2 * u)
    glabella = _band(y, eye_y + 0.1 * u, brow_top + 0.6 * u, 0.25 * u) * _band(x, -0.5 * u, 0.5 * u, 0.2 * u)
    return (np.stack([glabella, np.maximum(forehead, nose_root)], -1) * skin[:, None]).astype(np.float32)
