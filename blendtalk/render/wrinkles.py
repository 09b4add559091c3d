"""Dynamic wrinkles: fine skin lines where the animation compresses the skin.

Real skin folds into lines across the direction it is squeezed: raised brows crowd the forehead into
horizontal lines, knitted brows pinch vertical lines between them, a nose wrinkle (AU9) folds the
bridge, a cheek raise (AU6) bunches the skin under the eyes. Production rigs paint wrinkle maps and
fade them in per blendshape; this rig has no texture, so the lines come from the motion itself:
each frame measures how much every vertex's edges shortened against the rest pose, split into the
face's vertical and horizontal directions, and the shader draws a periodic line pattern in rest-pose
coordinates (so the lines ride on the skin) whose depth follows that compression. Nothing is drawn
where the skin is at rest or stretched, so speech alone (a stretched chin, an open jaw) stays smooth.

The nasolabial fold is not a fine line but one deep crease from the wing of the nose to beyond the
mouth corner, where the mobile skin of the cheek and upper lip meets skin held to the bone. It
deepens when that skin rises: the cheek raiser (AU6), the nose wrinkler (AU9), the upper-lip raiser
(AU10) and the smile (AU12): FACS lists the deepened nasolabial furrow among the appearance
changes of each (Ekman, Friesen & Hager 2002), a cue of disgust and of a Duchenne smile. Each frame measures how far the skin either side of
each fold rose in the head's own frame (the head's pose from the vertices that no unit moves), so a
nod is no rise and a jaw drop or a pucker, which pull that skin down or forward, draws no fold.

Per vertex the renderer carries six numbers (`Wrinkles.attributes`): the rest-pose line phase
across (u) and along (v) the face, the amounts of vertical and horizontal lines, the distance
across the nearest fold (in the fold's half-widths) and that fold's depth. Both the torch
rasterizer (`darkening`) and the OpenGL shader (`GLSL`) turn them into the same albedo factor.

For a renderer that blends precomputed maps instead (the browser's live face), `unit_wrinkles`
bakes what each ARKit unit alone draws, per vertex.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from ..face.geometry import sparse_matrix


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
    fold_strength: float = 0.45  # albedo darkening on the line of a fully deepened nasolabial fold
    fold_width: float = 0.004  # m, half-width of a fold's shadow: a crease a few millimetres across
    # m the skin beside a fold's upper half rises at which the fold starts to show and is fully
    # formed: on the shipped rig a full smile raises it 5-6 mm, a wrinkled nose (AU9) 2, a raised upper
    # lip (AU10) 1.7, while the rig's full lip closure raises it 0.8 mm and the speech model's talking
    # face (the ARCTIC clip) at most 0.34 mm: speech must draw nothing.
    fold_lift: tuple[float, float] = (0.0009, 0.0024)


ATTRIBUTES = 6  # per vertex: line phases (2), line amounts (2), fold coordinate and fold depth

# The same line pattern, written for the fragment shader (`render.gl`); keep it identical to `darkening`.
GLSL = """
uniform vec3 wrinkle_shape;  // strength, sharpness, fold strength
float wrinkle_factor(vec4 w, vec2 fold) {
    // w: phase across (u) and along (v) the face in line periods, amounts of vertical and horizontal lines
    // fold: distance across the nasolabial fold in its half-widths, the fold's depth
    float across = wrinkle_sharpen(0.5 + 0.5 * cos(6.283185307 * w.x));  // x ** sharpness, `render.gl` defines it
    float along = wrinkle_sharpen(0.5 + 0.5 * cos(6.283185307 * w.y));
    float crease = 0.5 + 0.5 * cos(3.141592654 * clamp(fold.x, -1.0, 1.0));
    float lines = wrinkle_shape.x * (w.z * across + w.w * along) + wrinkle_shape.z * fold.y * crease * crease;
    return max(1.0 - lines, 0.0);
}
"""


def wrinkle_glsl(sharpness: float) -> str:
    """`GLSL` with the `float wrinkle_sharpen(float x)` it calls: x ** sharpness for x in [0, 1]. A power of two is
    squared that many times: llvmpipe's pow (an exp2 of a log2) made the wrinkle lines a quarter of
    the fragment shader's cost, and the squares give the same 8-bit frames."""
    squarings = math.log2(sharpness) if sharpness >= 1 else -1.0
    if squarings < 0 or squarings != int(squarings) or squarings > 8:
        return "float wrinkle_sharpen(float x) { return pow(x, %r); }\n" % sharpness + GLSL
    return "float wrinkle_sharpen(float x) {%s return x; }\n" % (" x *= x;" * int(squarings)) + GLSL


def darkening(wrinkle: torch.Tensor, config: WrinkleConfig) -> torch.Tensor:
    """Interpolated wrinkle attributes (M, 6) [u, v, vertical amount, horizontal amount, fold
    coordinate, fold depth] -> albedo factor (M,) in [0, 1]: 1 where there is no line."""
    across = (0.5 + 0.5 * torch.cos(2 * math.pi * wrinkle[:, 0])).pow(config.sharpness)
    along = (0.5 + 0.5 * torch.cos(2 * math.pi * wrinkle[:, 1])).pow(config.sharpness)
    crease = 0.5 + 0.5 * torch.cos(math.pi * wrinkle[:, 4].clamp(-1, 1))  # 1 on the fold, 0 a half-width off
    lines = config.strength * (wrinkle[:, 2] * across + wrinkle[:, 3] * along) + config.fold_strength * wrinkle[:, 5] * crease * crease
    return (1 - lines).clamp(min=0)


class FoldMasks(NamedTuple):
    """Where a rig's two nasolabial folds lie, on its rest pose (`nasolabial_folds`)."""

    across: np.ndarray  # (V,) m, signed distance across the nearest fold: + on the lip side, - on the cheek side
    line: np.ndarray  # (V,) in [0, 1], where the crease may show: its ends taper, lips and lids stay clear
    side: np.ndarray  # (V,) int, the nearest fold: 0 on the face's left (+x), 1 on its right
    lift: np.ndarray  # (2, V) weights (each row sums to 1) of the skin whose rise deepens each fold
    still: np.ndarray  # (V,) bool, the vertices that no unit moves: they give the head's pose


class Wrinkles:
    """Per-frame wrinkle attributes of one face.

    rest: (V, 3) template, +y up and +x across the face (the rig's frame). triangles: (F, 3).
    mask: (V, 2) in [0, 1], where skin shows [vertical, horizontal] lines (`line_masks`).
    folds: optional `FoldMasks` of the nasolabial folds (`nasolabial_folds`); None draws none.
    """

    def __init__(self, rest: torch.Tensor, triangles: torch.Tensor, mask: torch.Tensor, config: WrinkleConfig,
                 folds: FoldMasks | None = None):
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
        self.to_vertex = [sparse_matrix(ends, ids, self.share.repeat(2, 1)[:, k] / total[ends, k], (count, len(edges)))
                          for k in range(2)]
        degree = torch.bincount(ends, minlength=count).clamp(min=1).float()
        self.ring_mean = sparse_matrix(ends, torch.cat([edges[:, 1], edges[:, 0]]), 1 / degree[ends], (count, count))
        self.mask = mask[self.vertices]  # (R, 2)
        self.onset, self.full = (torch.tensor(v, device=dev) for v in (config.onset, config.full))
        x, y = rest[:, 0], rest[:, 1]
        x = x - float((x.amin() + x.amax()) / 2)
        # Vertical lines sit either side of the midline (the "11" between knitted brows), not on it.
        self.phase = torch.stack([x / config.spacing + 0.5, (y + config.arch * x * x) / config.spacing], -1)  # (V, 2)
        self.folds = None
        if folds is not None and config.fold_strength > 0:
            if folds.across.shape != (self.num_vertices,) or folds.lift.shape != (2, self.num_vertices):
                raise ValueError(f"fold masks must be for V={self.num_vertices} vertices, got {folds.across.shape}")
            across = torch.as_tensor(folds.across, dtype=torch.float32, device=dev)
            self.fold_coordinate = across / config.fold_width  # (V,) in half-widths, linear across a triangle
            self.fold_line = torch.as_tensor(folds.line, dtype=torch.float32, device=dev)  # (V,)
            self.fold_side = torch.as_tensor(folds.side, dtype=torch.long, device=dev)  # (V,)
            self.fold_lift = torch.as_tensor(folds.lift, dtype=torch.float32, device=dev)  # (2, V)
            self.still = torch.as_tensor(np.flatnonzero(folds.still), device=dev)  # (S,)
            still = rest[self.still]
            self.still_centre = still.mean(0)  # (3,)
            self.still_rest = still - self.still_centre  # (S, 3)
            self.lift_rest = self.fold_lift @ rest  # (2, 3) where the skin beside each fold sits at rest
            self.folds = folds

    def carriers(self) -> torch.Tensor:
        """(V,) bool: the vertices where `attributes` can give a line amount or a fold depth other than
        0 (a line mask or a fold line); everywhere else both are 0 in every frame."""
        out = torch.zeros(self.num_vertices, dtype=torch.bool, device=self.mask.device)
        out[self.vertices] = (self.mask > 0).any(-1)
        if self.folds is not None:
            out |= self.fold_line > 0
        return out

    def amounts(self, vertices: torch.Tensor) -> torch.Tensor:
        """Face vertices (T, V, 3) -> (T, V, 2) amounts in [0, 1] of [vertical lines, horizontal lines]."""
        return self.lines(self.squeeze(vertices))

    def lines(self, squeezed: torch.Tensor) -> torch.Tensor:
        """Squeeze (T, V, 2) from `squeeze` -> (T, V, 2) line amounts in [0, 1]: faded in between the
        onset and full squeeze, only where the skin folds into lines (the mask)."""
        ramp = ((squeezed[:, self.vertices] - self.onset) / (self.full - self.onset)).clamp(0, 1)
        ramp = ramp * ramp * (3 - 2 * ramp)  # smoothstep: lines fade in, never pop
        out = torch.zeros_like(squeezed)
        out[:, self.vertices] = ramp * self.mask
        return out

    def squeeze(self, vertices: torch.Tensor) -> torch.Tensor:
        """Face vertices (T, V, 3) -> (T, V, 2) share by which the skin around each vertex is shortened
        [along x, along y] against the rest pose, spread over the muscle's belly (0 out of reach of a zone)."""
        e, t_count = self.edges, vertices.shape[0]
        local = vertices[:, self.vertices.to(vertices.device)].transpose(0, 1)  # (R, T, 3)
        length = (local[e[:, 1]] - local[e[:, 0]]).norm(dim=-1)  # (E, T)
        squeeze = (1 - length / self.rest_length[:, None]).clamp(min=0)  # (E, T) shortening, 0 when stretched
        squeezed = torch.cat([op @ squeeze for op in self.to_vertex], 1)  # (R, 2T): along x, along y
        # A muscle squeezes the skin over its whole belly, while the rig's units bunch it near the
        # features they move: spread the squeeze a few rings (the frontalis lines the whole forehead).
        for _ in range(self.config.spread):
            squeezed = torch.maximum(squeezed, self.ring_mean @ squeezed)
        # Squeezed along x -> vertical lines; along y -> horizontal lines.
        out = torch.zeros(t_count, self.num_vertices, 2, device=vertices.device)
        out[:, self.vertices] = squeezed.reshape(-1, 2, t_count).permute(2, 0, 1)  # (T, R, 2)
        return out

    def fold_depths(self, vertices: torch.Tensor) -> torch.Tensor:
        """Face vertices (T, V, 3) -> (T, 2) depth in [0, 1] of the [left, right] nasolabial fold:
        the skin's rise beside each fold (`fold_rise`) eased in between `WrinkleConfig.fold_lift`'s
        onset and full rise. Zeros without fold masks."""
        if self.folds is None:
            return torch.zeros(vertices.shape[0], 2, device=vertices.device)
        onset, full = self.config.fold_lift
        ramp = ((self.fold_rise(vertices) - onset) / (full - onset)).clamp(0, 1)
        return ramp * ramp * (3 - 2 * ramp)

    def fold_rise(self, vertices: torch.Tensor) -> torch.Tensor:
        """Face vertices (T, V, 3) -> (T, 2) m that the skin beside the [left, right] nasolabial fold
        rose against the rest pose, measured in the head's own frame so that a nod or a turn of the
        whole head is no rise. Requires fold masks."""
        t_count = vertices.shape[0]
        still = vertices[:, self.still]  # (T, S, 3)
        centre = still.mean(1, keepdim=True)  # (T, 1, 3)
        # Kabsch: the rotation that carries the rest pose's still vertices onto this frame's.
        cov = torch.einsum("si,tsj->tij", self.still_rest, still - centre)  # (T, 3, 3)
        u, _, vh = torch.linalg.svd(cov)
        flip = torch.ones(t_count, 3, device=vertices.device)
        flip[:, 2] = torch.sign(torch.linalg.det(vh.transpose(1, 2) @ u.transpose(1, 2)))
        rotation = vh.transpose(1, 2) @ (flip[:, :, None] * u.transpose(1, 2))  # (T, 3, 3): rest -> frame
        skin = torch.einsum("kv,tvi->tki", self.fold_lift, vertices)  # (T, 2, 3)
        local = (skin - centre) @ rotation + self.still_centre  # (T, 2, 3) back in the rest pose's frame
        return local[..., 1] - self.lift_rest[:, 1]  # (T, 2) m

    def attributes(self, vertices: torch.Tensor, total_vertices: int) -> torch.Tensor:
        """Face vertices (T, V, 3) -> (T, total_vertices, ATTRIBUTES) [u, v, vertical, horizontal,
        fold coordinate, fold depth]; the vertices after the face's (attached parts: teeth, eyes,
        hair) never wrinkle."""
        t_count, v = vertices.shape[0], self.num_vertices
        out = torch.zeros(t_count, total_vertices, ATTRIBUTES, device=vertices.device)
        out[:, :v, :2] = self.phase
        out[:, :v, 2:4] = self.amounts(vertices)
        if self.folds is not None:
            out[:, :v, 4] = self.fold_coordinate
            out[:, :v, 5] = self.fold_depths(vertices)[:, self.fold_side] * self.fold_line  # (T, V)
        return out


def _band(value: np.ndarray, low: float, high: float, soft: float) -> np.ndarray:
    """1 inside [low, high], easing to 0 over `soft` outside it (smoothstep edges)."""
    a = np.clip((value - (low - soft)) / soft, 0, 1)
    b = np.clip(((high + soft) - value) / soft, 0, 1)
    return (a * a * (3 - 2 * a)) * (b * b * (3 - 2 * b))


def line_masks(rig) -> np.ndarray:
    """(V, 2) in [0, 1]: where a dressed rig's skin shows [vertical, horizontal] lines. Where faces
    do: horizontal lines across the forehead above the brows, the root of the nose and its bridge and sides,
    vertical lines in the glabella between the brows. The cheeks, mouth and chin fold in broad
    creases (the nasolabial fold: `nasolabial_folds`), not in fine lines, and the lips and lids
    fold their own way."""
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
    # The nose wrinkler (AU9) bunches the skin of the bridge and of the nose's sides into lines across
    # them, down to about the middle of the nose (FACS's appearance changes of AU9, Ekman, Friesen &
    # Hager 2002); the skin of the nose's lower half is held to cartilage and does not fold.
    # Its front surface only: the band also crosses the nostrils' and the mouth's insides behind it.
    front = _band(rig.vertices[:, 2].astype(np.float64), float(eyes[:, 2].mean()), 10.0, 0.1 * u)
    nose = _band(y, eye_y - 0.95 * u, eye_y - 0.2 * u, 0.15 * u) * _band(x, -0.45 * u, 0.45 * u, 0.2 * u) * front
    glabella = _band(y, eye_y + 0.1 * u, brow_top + 0.6 * u, 0.25 * u) * _band(x, -0.5 * u, 0.5 * u, 0.2 * u)
    across = np.maximum.reduce([forehead, nose_root, nose])
    return (np.stack([glabella, across], -1) * skin[:, None]).astype(np.float32)


def nasolabial_folds(rig) -> FoldMasks:
    """The two nasolabial folds of a dressed rig, placed from its eyes: each runs from beside the
    wing of the nose, down and out, to beyond the mouth corner, a curve fixed in rest-pose x, y (so
    the crease rides on the skin). Proportions: the nose wing sits about 0.6 of the half distance
    between the pupils out from the midline, and the fold ends about a centimetre outside and below the
    mouth corner (Farkas 1994, anthropometry of the head and face)."""
    v = rig.vertices.astype(np.float64)
    eyes = np.asarray(rig.dressing["eye_centres"], dtype=np.float64)  # (2, 3)
    eye_y, u = float(eyes[:, 1].mean()), float(abs(eyes[0, 0] - eyes[1, 0]) / 2)
    x = v[:, 0] - float(eyes[:, 0].mean())
    # A quadratic Bezier per side in units of u below the eyes: nose wing, bend, end.
    ends = np.array([[0.62, -1.23], [1.12, -1.72], [1.45, -2.50]]) * u
    s = np.linspace(0.0, 1.0, 64)[:, None]
    curve = (1 - s) ** 2 * ends[0] + 2 * s * (1 - s) * ends[1] + s ** 2 * ends[2]  # (N, 2), the face's left
    curve[:, 1] += eye_y
    tangent = np.gradient(curve, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], 1)  # (N, 2) toward the lips (inward and down)
    side = (x < 0).astype(np.int64)  # 0: the face's left, 1: its right (mirrored)
    p = np.stack([np.abs(x), v[:, 1]], 1)  # (V, 2) both halves folded onto the left
    dist = np.linalg.norm(p[:, None] - curve[None], axis=2)  # (V, N)
    nearest = dist.argmin(1)
    across = ((p - curve[nearest]) * normal[nearest]).sum(1)  # (V,) + toward the lips
    along = s[nearest, 0]
    # Only the skin surface near the curve: not the mouth's inside or the far side of the head.
    front = np.zeros(len(v), bool)
    near = dist.min(1) < 0.6 * u
    if near.any():
        surface = np.full(len(curve), -np.inf)
        np.maximum.at(surface, nearest[near], v[near, 2])
        front = near & (v[:, 2] > surface[nearest] - 0.25 * u)
    skin = np.ones(len(v))
    if "lips" in rig.masks:
        skin[np.asarray(rig.masks["lips"])] = 0.0
    taper = _band(along, 0.12, 0.85, 0.12)  # the fold fades in beside the nose wing and out below the corner
    line = (taper * skin * front).astype(np.float32)
    # The skin either side of the fold's upper half (within ~ a centimetre) is what rises into it:
    # AU9 and AU10 raise the upper part of the furrow (FACS), while the lower part follows the mouth
    # corners, which speech moves too.
    lift = np.zeros((2, len(v)))
    for k in (0, 1):
        zone = front & (side == k) & (np.abs(across) < 0.33 * u) & (along > 0.1) & (along < 0.5) & (skin > 0)
        lift[k, zone] = 1.0 / max(int(zone.sum()), 1)
    still = np.linalg.norm(rig.deltas, axis=2).max(0) < 1e-4  # (V,)
    return FoldMasks(across.astype(np.float32), line, side, lift.astype(np.float32), still)


def unit_wrinkles(rig, config: WrinkleConfig = WrinkleConfig()) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """What every blendshape unit of a dressed rig draws alone at weight 1, for a renderer that
    blends precomputed maps by the unit weights (the browser's live face) instead of measuring the
    skin per frame: -> (static (V, 3) float32 [u, v, fold coordinate], the line phases and the fold
    coordinate in half-widths as `darkening` reads them; {unit name: (V, 3) float32 [vertical
    lines, horizontal lines, fold depth] in [0, 1]}). Amounts ramp with the squeeze, so a blend of
    unit maps by weight only approximates what the measured skin draws; summed maps must be clipped to 1."""
    wr = Wrinkles(torch.as_tensor(rig.vertices, dtype=torch.float32), torch.as_tensor(rig.triangles),
                  torch.as_tensor(line_masks(rig)), config, nasolabial_folds(rig))
    poses = torch.as_tensor(rig(np.eye(rig.num_blendshapes, dtype=np.float32)), dtype=torch.float32)  # (K, V, 3)
    attributes = wr.attributes(poses, rig.num_vertices).numpy()  # (K, V, 6)
    static = attributes[0][:, [0, 1, 4]].astype(np.float32)
    return static, {name: attributes[k][:, [2, 3, 5]].astype(np.float32) for k, name in enumerate(rig.blendshape_names)}
