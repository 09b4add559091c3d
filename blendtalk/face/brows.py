"""Eyebrows drawn per pixel from where the skin was at rest, so they ride on the skin as hair does.

A brow is a curve over each eye from a thick medial head to a thin tail, arched about two thirds
along (`BrowShape`, in metres about the eye's centre, mirrored for the right eye). Painted on the
face's vertices (about 3 mm apart) a brow is a blur of vertex colours, and when the brows rise
the triangles under them stretch and smear that blur down toward the eye: a raised brow read as a
heavy, knitted one, and surprise as anger. So the renderer carries each skin vertex's rest-pose
position about its eye (`brow_coordinates`) and evaluates the curve per pixel (`brow_density`,
and `brow_glsl` for the OpenGL path): the edge stays about a millimetre soft whatever the skin
under it does, and the coordinates ride with the skin of the brow's centre line (`BrowRide`), so
a raised brow keeps its thickness. Exports and the browser's plain look, which have vertex colours
only, keep the per-vertex paint that `tools/build_face_rig.py` bakes with the same shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

FRONT_NORMAL_Z = 0.3  # skin whose rest normal points this much toward the camera can carry a brow
# m beyond a brow's edge (at rest) where the gate stays open: the ride moves a vertex's coordinates
# up to about 5 mm, and a triangle (3-5 mm) that the moved brow touches must have all corners inside.
GATE_MARGIN = 0.012
ANCHOR_VERTICES = 6  # vertices whose motion is blended into a point of a brow's centre line
ANCHOR_SPREAD = 0.003  # m, the Gaussian's width over them


@dataclass(frozen=True)
class BrowShape:
    """One brow, metres about the eye's centre: x toward the temple (the head at `head_x` sits
    toward the midline), y up; u in [0, 1] runs from the head to the tail."""

    head_x: float = -0.019  # the heads sit about 12 mm either side of the midline
    tail_x: float = 0.027  # past the outer eye corner
    base_y: float = 0.0135  # above the eye centre at the head, on the brow ridge
    arch: float = 0.0055  # peak rise of the arch, at `peak` along
    peak: float = 0.65
    tail_drop: float = 0.004  # how far the tail falls below the peak
    head_half_width: float = 0.0035  # half-thickness of the medial head (the vertex paint needs 4.5 mm to show)
    tail_half_width: float = 0.0012  # half-thickness of the tapered tail
    soft_edge: float = 0.001  # over which the paint fades into skin: hair thins at a brow's edge


def brow_coordinates(rest: np.ndarray, eye_centres: np.ndarray, normals: np.ndarray,
                     shape: BrowShape = BrowShape()) -> np.ndarray:
    """Rest vertices (V, 3), eye centres (2, 3), rest normals (V, 3) -> (V, 3) float64: each
    vertex's (x, y) about the eye on its side, x mirrored so that it grows toward the temple on
    both sides, and a gate: 1 on forward-facing skin in front of the eyes within `GATE_MARGIN` of
    a brow, 0 elsewhere (the back of the head has the same x and y as the front, and a software
    rasterizer evaluates the curve only for triangles whose corners all carry the gate)."""
    rest, eye_centres, normals = (np.asarray(a, np.float64) for a in (rest, eye_centres, normals))
    out = np.zeros((len(rest), 3))
    for c in eye_centres:
        side = np.sign(c[0])
        mine = np.sign(rest[:, 0]) == side
        out[mine, 0] = side * (rest[mine, 0] - c[0])
        out[mine, 1] = rest[mine, 1] - c[1]
        out[mine, 2] = (rest[mine, 2] > c[2]) & (normals[mine, 2] > FRONT_NORMAL_Z)
    out[:, 2] *= band_distance(out[:, :2], shape) < GATE_MARGIN
    return out


class BrowRide:
    """Per-frame brow coordinates (T, V, 3) from face vertices (T, V, 3): the brow moves as one piece
    with the skin on its centre line.

    Brow hair grows in the thick skin over the brow ridge, which slides as a whole; the rig's brow
    units instead raise the top of a brow about twice as far as its bottom (9.5 against 4.3 mm at
    the head), which drew a raised brow half again as thick. So each vertex near a brow takes its
    coordinates in the frame of the nearest point of the brow's centre line, `anchor`: rest
    coordinates plus its own motion less the anchor's, blended back to plain rest coordinates
    within `reach` of the brow's edge. Linear in the vertices, so it is linear in the rig's weights.

    coords: (V, 3) rest coordinates (`brow_coordinates`); rest: (V, 3) the face at rest."""

    def __init__(self, coords: np.ndarray, rest: np.ndarray, shape: BrowShape = BrowShape(), reach: float = 0.006):
        coords, rest = np.asarray(coords, np.float64), np.asarray(rest, np.float64)
        length = shape.tail_x - shape.head_x
        u = np.clip((coords[:, 0] - shape.head_x) / length, 0, 1)
        y, half = brow_curve(u, shape)
        gate = coords[:, 2] > 0
        weight = np.clip(1 - np.maximum(np.abs(coords[:, 1] - y) - half, 0) / reach, 0, 1) * gate  # (V,)
        side = np.sign(rest[:, 0])
        # Each vertex's anchor: the skin motion at its point of the centre line, a Gaussian blend of
        # the nearest vertices there (they are 3-5 mm apart; the nearest one alone made a ragged band).
        anchor = np.tile(np.arange(len(coords))[:, None], (1, ANCHOR_VERTICES))  # (V, k)
        blend = np.full((len(coords), ANCHOR_VERTICES), 1.0 / ANCHOR_VERTICES)
        for s in (-1.0, 1.0):
            near = np.flatnonzero((side == s) & (weight > 0))
            candidates = np.flatnonzero((side == s) & gate)
            if len(near) and len(candidates) >= ANCHOR_VERTICES:
                centre = np.stack([shape.head_x + u[near] * length, y[near]], 1)  # (n, 2) the brow's centre line
                d = np.linalg.norm(coords[candidates, None, :2] - centre[None], axis=-1)  # (m, n)
                nearest = np.argsort(d, 0)[:ANCHOR_VERTICES].T  # (n, k)
                g = np.exp(-0.5 * (np.take_along_axis(d.T, nearest, 1) / ANCHOR_SPREAD) ** 2)
                anchor[near], blend[near] = candidates[nearest], g / g.sum(1, keepdims=True)
        moving = np.flatnonzero(weight > 0)  # (n,) the vertices near a brow: the rest keep rest coordinates
        self.coords = torch.as_tensor(coords, dtype=torch.float32)
        self.rest = torch.as_tensor(rest, dtype=torch.float32)
        self.moving = torch.as_tensor(moving)
        self.anchor = torch.as_tensor(anchor[moving])  # (n, k)
        self.blend = torch.as_tensor(blend[moving], dtype=torch.float32)  # (n, k)
        # (n, 3) factors on the relative motion: mirrored x, y, and nothing on the gate.
        self.scale = torch.as_tensor(np.stack([side * weight, weight, 0 * weight], 1)[moving], dtype=torch.float32)

    def to(self, device) -> "BrowRide":
        for name in ("coords", "rest", "moving", "anchor", "blend", "scale"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def __call__(self, vertices: torch.Tensor) -> torch.Tensor:
        moved = vertices[:, self.moving] - self.rest[self.moving]  # (T, n, 3)
        centre = ((vertices[:, self.anchor] - self.rest[self.anchor]) * self.blend[..., None]).sum(2)  # (T, n, 3) the anchor's motion
        out = self.coords.expand(vertices.shape[0], -1, -1).clone()
        out[:, self.moving] += (moved - centre) * self.scale
        return out


def brow_curve(u, shape: BrowShape = BrowShape()):
    """The brow's centre height (m) and half-thickness at u in [0, 1] (numpy or torch arrays)."""
    lib = torch if isinstance(u, torch.Tensor) else np
    head = lib.sin((0.5 * math.pi / shape.peak) * u)
    tail = 1 - (shape.tail_drop / shape.arch) * ((u - shape.peak) / (1 - shape.peak)) ** 2
    y = shape.base_y + shape.arch * lib.where(u < shape.peak, head, tail)
    half = shape.head_half_width + (shape.tail_half_width - shape.head_half_width) * u ** 1.5
    return y, half


def band_distance(xy, shape: BrowShape = BrowShape()):
    """Brow coordinates (..., 2), numpy or torch -> distance (...) m outside the brow (< 0 inside):
    taken vertically inside the brow's length (the curve is nearly level) and to its end beyond
    the head and the tail."""
    lib = torch if isinstance(xy, torch.Tensor) else np
    length = shape.tail_x - shape.head_x
    u = (xy[..., 0] - shape.head_x) / length
    uc = lib.clip(u, 0, 1)
    y, half = brow_curve(uc, shape)
    return lib.hypot((u - uc) * length, xy[..., 1] - y) - half


def brow_density(coords: torch.Tensor, shape: BrowShape = BrowShape()) -> torch.Tensor:
    """Interpolated brow coordinates (..., 3) (`brow_coordinates`) -> paint (...) in [0, 1]: 1 inside
    the brow, fading to 0 over `soft_edge` beyond it."""
    gate = (coords[..., 2] >= 1.0 - 1e-3).to(coords.dtype)  # a triangle that leaves the gate carries none
    return (1 - band_distance(coords[..., :2], shape) / shape.soft_edge).clamp(0, 1) * gate


def brow_glsl(shape: BrowShape = BrowShape()) -> str:
    """GLSL `float brow_density(vec3 b)`: `brow_density` in a fragment shader."""
    length = shape.tail_x - shape.head_x
    return f"""
float brow_density(vec3 b) {{
    float u = (b.x - ({shape.head_x!r})) / {length!r};
    float uc = clamp(u, 0.0, 1.0);
    float t = (uc - {shape.peak!r}) / {1 - shape.peak!r};
    float rise = uc < {shape.peak!r} ? sin({0.5 * math.pi / shape.peak!r} * uc) : 1.0 - {shape.tail_drop / shape.arch!r} * t * t;
    float y = {shape.base_y!r} + {shape.arch!r} * rise;
    float half_width = {shape.head_half_width!r} + {shape.tail_half_width - shape.head_half_width!r} * uc * sqrt(uc);
    float d = length(vec2((u - uc) * {length!r}, b.y - y)) - half_width;
    return clamp(1.0 - d / {shape.soft_edge!r}, 0.0, 1.0) * (b.z >= 0.999 ? 1.0 : 0.0);
}}
"""

