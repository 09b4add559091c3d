"""The dressed face: teeth, tongue, eyelashes, eyeballs and painted brows worn by the learned face.

The models only ever see the rig's face vertices (V, 3). The dressing is attached geometry and
colour, driven at render and export time from those vertices alone (the pipeline's output is
vertices, not rig weights):

- the face displacement is projected onto the rig's 52 units with a fixed ridge pseudo-inverse
  (52, V*3); the clamped estimates drive the helper meshes through their own rows of the same
  face-unit targets (jawOpen and jawLeft/Right/Forward move the lower teeth and tongue; the upper
  teeth sit on the skull);
- each lash vertex follows the displacement of its anchor vertex on the lid, so lashes stay on
  the lids whatever drives them;
- the eyeballs (sclera, iris with a limbal ring, pupil) rotate about their centres with the gaze
  and shrink just inside the nearest lid vertex, so they never poke through a closing lid;
- the brows are paint on the face vertices (from the asset's `face_brow` density), so they move
  with the brow units for free, for views with vertex colours only (exports, Plotly); the
  renderer instead draws them per pixel (`painted_brows=False`, `face.brows`); the lips get a tint;
- short hair is a cap over the scalp, rigid with the skull (zero unit deltas, like the upper
  teeth), its hairline well above the raised brows; matte, with a little per-strand colour noise
  and a thinner, skin-showing edge;
- the neck is skin below the face's cut: its top ring copies the face's boundary vertices (anchor
  weight 1), and the anchor weight of the rest falls smoothly to 0 a few cm below, so the under-chin
  follows the jaw while the neck's far end stays with the skull. Its triangles use the face's own
  boundary vertices (the copies are welded), so the skin is one surface with smooth normals in
  every view.

Layout of a dressed mesh: face vertices [0, V), then the parts in `PARTS` order, each contiguous.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .brows import brow_coordinates
from .geometry import boundary_edges, smooth, vertex_normals
from .teeth import CERVIX, GUM, affine_motion, dentition_arch, smile_yield

PARTS = ("upper_teeth", "lower_teeth", "tongue", "lashes", "hair", "neck", "left_eye", "right_eye")
_HELPERS = 6  # PARTS[:6] come from the asset's helper meshes (codes of `dressing_part`), the eyeballs are built here
# Thin sheets whose back a camera can see (a lash card, the inside of the hair cap at its edge). The
# rest is drawn front faces only: renders of every emotion at 1.0 and 1.5 with head motion showed the
# back of the face only in slivers at the lid corners, 0.4 px a frame, and teeth, tongue and eyes never.
TWO_SIDED = ("lashes", "hair")
_OPTIONAL = ("hair", "neck")  # parts a config may leave out and that rigs built before them lack
_RIDGE = 1e-4  # relative ridge of the unit projection: units the face cannot show (tongueOut) read as 0
_LID_CLEARANCE = 0.0003  # m kept between the eyeball and the nearest lid vertex
_MAX_GAZE = math.radians(35.0)  # rad: beyond this the iris would leave the lid opening
# Eyeball: rings of the cap (polar angle, deg) and their colour: 0 pupil, 1 iris, 2 limbus, 3 sclera.
# The back of the ball is never seen through the lids, so the cap stops at 115 deg.
EYE_RINGS = ((3, 0), (6, 0), (8.5, 0), (10, 1), (16, 1), (22, 1), (25.5, 1), (27.5, 2), (29.5, 3),
             (38, 3), (50, 3), (64, 3), (80, 3), (97, 3), (115, 3))
EYE_SEGMENTS = 24  # vertices per eyeball ring
_HAIR_SEED = 0  # fixed: the hair's colour noise is part of the look, the same on every run
_HAIR_EDGE_FADE = 0.012  # m above the hairline over which short hair thins into skin


@dataclass(frozen=True)
class DressingConfig:
    """Colours of the dressing, sRGB in [0, 1]."""

    skin: tuple[float, float, float] = (0.90, 0.72, 0.62)  # light skin albedo
    lips: tuple[float, float, float] = (0.78, 0.45, 0.45)  # lip tint
    brow: tuple[float, float, float] = (0.24, 0.16, 0.11)  # dark brown: reads in greyscale too
    brow_opacity: float = 0.92  # the densest paint still lets a little skin through, like hair
    # False leaves the brows out of `colours` for a renderer that draws them per pixel from
    # `FaceDressing.brows` (`face.brows`); vertex colours alone (exports, Plotly) keep the paint.
    painted_brows: bool = True
    # Enamel: off-white (pure white crowns glare like a bared-teeth grimace); a yellower one goes
    # olive in the shade of the mouth.
    teeth: tuple[float, float, float] = (0.84, 0.82, 0.77)
    tooth_neck: tuple[float, float, float] = (0.94, 0.90, 0.82)  # factor at a crown's gum line: dentine shows warmer there
    gums: tuple[float, float, float] = (0.80, 0.47, 0.47)  # pink, a shade off the lips
    tongue: tuple[float, float, float] = (0.78, 0.36, 0.38)  # pink-red
    lashes: tuple[float, float, float] = (0.07, 0.05, 0.05)  # near black
    # The source's lashes are solid cards (its hair texture is not used): the lower ones draw a grey
    # band under each eye and tangle with the upper ones in a blink. Their length from the lid, 0..1.
    lower_lashes: float = 0.4
    lower_lash_fade: float = 0.8  # how far the lower lashes' tips take the skin's colour, 0..1
    iris: tuple[float, float, float] = (0.38, 0.26, 0.17)  # hazel-brown
    sclera: tuple[float, float, float] = (0.86, 0.84, 0.80)  # off-white: eyes sit in the lids' shade
    pupil: tuple[float, float, float] = (0.06, 0.05, 0.05)
    # Light reaches the inside of the mouth only through the lips: teeth and tongue darken with depth
    # behind the incisors' front, toward 1 - mouth_shade, falling by 1/e every mouth_falloff m.
    mouth_shade: float = 0.7
    mouth_falloff: float = 0.030
    eyes: bool = True  # False leaves the eye sockets empty
    hair: bool = True  # False leaves the scalp bare (the mannequin look)
    neck: bool = True  # False ends the face at the cut under the chin (the learned face alone)
    hair_colour: tuple[float, float, float] = (0.18, 0.12, 0.08)  # dark brown, a shade darker than the brows
    hair_variation: float = 0.12  # relative brightness noise per hair vertex: matte strands, not plastic
    hair_edge_skin: float = 0.6  # how much skin shows through at the hairline, 0..1: short hair thins there
    hair_roots: float = 0.2  # how far the skin at the hairline takes the hair's colour (the asset's `face_hair`), 0..1
    # Rest offsets (x, y, z) m of the source helpers: MakeHuman's upper teeth hide behind the upper
    # lip and its tongue rests against the palate, filling an open mouth; real lips parted show
    # the upper incisors' edges.
    upper_teeth_offset: tuple[float, float, float] = (0.0, -0.0015, 0.0)
    tongue_offset: tuple[float, float, float] = (0.0, -0.006, -0.003)


def estimate_weights(displacement, projection):
    """Face displacement (T, V, 3) and projection (52, V*3) -> unit weights (T, 52), clamped to [0, 1]."""
    return (displacement.reshape(displacement.shape[0], -1) @ projection.T).clamp(0, 1)


def gaze_rotation(gaze: torch.Tensor) -> torch.Tensor:
    """Gaze (T, 2) rad [yaw (+ toward the face's left, +x), pitch (+ up)] -> rotations (T, 3, 3)
    taking the eye's rest direction +z to the gaze direction (yaw about +y after pitch about -x)."""
    yaw, pitch = gaze.unbind(-1)
    cy, sy, cp, sp = yaw.cos(), yaw.sin(), pitch.cos(), pitch.sin()
    zero, one = torch.zeros_like(yaw), torch.ones_like(yaw)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape(-1, 3, 3)
    rx = torch.stack([one, zero, zero, zero, cp, sp, zero, -sp, cp], -1).reshape(-1, 3, 3)
    return ry @ rx


def eyeball_cap(colours: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A unit eyeball cap looking down +z: vertices (E, 3), triangles (G, 3) counter-clockwise from
    outside, sRGB colours (E, 3) from `colours` (4, 3) [pupil, iris, limbus, sclera]."""
    phi = np.linspace(0, 2 * np.pi, EYE_SEGMENTS, endpoint=False)
    verts, kinds = [np.array([[0.0, 0.0, 1.0]])], [np.zeros(1, dtype=np.int64)]
    for polar, kind in EYE_RINGS:
        t = np.radians(polar)
        verts.append(np.stack([np.sin(t) * np.cos(phi), np.sin(t) * np.sin(phi), np.full_like(phi, np.cos(t))], -1))
        kinds.append(np.full(EYE_SEGMENTS, kind))
    j = np.arange(EYE_SEGMENTS)
    k = (j + 1) % EYE_SEGMENTS
    tris = [np.stack([np.zeros_like(j), 1 + j, 1 + k], -1)]
    for ring in range(len(EYE_RINGS) - 1):
        a, b = 1 + ring * EYE_SEGMENTS, 1 + (ring + 1) * EYE_SEGMENTS
        tris += [np.stack([a + j, b + j, b + k], -1), np.stack([a + j, b + k, a + k], -1)]
    return np.concatenate(verts).astype(np.float32), np.concatenate(tris), colours[np.concatenate(kinds)]


def hair_colours(vertices: np.ndarray, triangles: np.ndarray, config: DressingConfig) -> np.ndarray:
    """Colours (H, 3) of a hair cap of vertices (H, 3) m and triangles (G, 3): `config.hair_colour`
    with seeded per-vertex brightness noise, thinning toward the skin (`hair_edge_skin`) over the
    `_HAIR_EDGE_FADE` nearest its open edge. Measured in metres, not vertex rings: the cap's rim is
    cut along the hairline, so its triangles there are of every size."""
    rim = vertices[np.unique(boundary_edges(triangles))]  # (R, 3) on the hairline
    gap = np.sqrt(((vertices[:, None] - rim[None]) ** 2).sum(-1)).min(1)  # (H,) m to the nearest rim vertex
    t = np.clip(1 - gap / _HAIR_EDGE_FADE, 0, 1)
    edge = (t * t * (3 - 2 * t))[:, None]  # (H, 1), 1 on the line
    noise = np.random.default_rng(_HAIR_SEED).uniform(-1, 1, (len(vertices), 1))
    base = np.asarray(config.hair_colour) * (1 + config.hair_variation * noise)
    return base + config.hair_edge_skin * edge * (np.asarray(config.skin) - base)


def lip_tint(lips: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(V,) bool lip region -> (V,) float tint in [0, 1]: the region eroded by two rings (it reaches
    past the red of the lips), then softened."""
    tri = torch.as_tensor(triangles).long()
    tint = torch.as_tensor(lips, dtype=torch.float32)
    for _ in range(2):
        tint = (smooth(tint, tri, steps=1) > 0.999).float()
    return smooth(tint, tri, steps=2).numpy()


@dataclass(frozen=True, eq=False)
class FaceDressing:
    """Dressing of one face rig. Build it with `FaceDressing.for_rig(rig)`; call it on face vertices.

    template: (V, 3) neutral face. projection: (52, V*3) face displacement -> unit weights.
    helper_vertices: (H, 3) teeth, tongue, lashes at rest; helper_deltas: (52, H, 3);
    helper_anchor: (H,) face vertex each lash or neck vertex follows, -1 for unit-driven vertices;
    anchor_weight: (H,) how much of its anchor's displacement it takes (1 lashes and the neck's top
    ring, falling to 0 down the neck).
    eye_cap: (E, 3) unit eyeball cap; eye_centres: (2, 3); eye_radius: (2,) m at rest;
    lid_index: (2, L) face vertices in front of each eyeball that bound its radius.
    triangles: (F + G, 3) of the dressed mesh; colours: (V + H + 2E, 3) sRGB;
    brows: (V + H + 2E, 3) rest-pose brow coordinates (`face.brows.brow_coordinates`) for a renderer
    that draws the brows per pixel, in `brow_paint` (sRGB colour and opacity, (4,)); all zeros
    where `colours` already carry them (`DressingConfig.painted_brows`) and off the face;
    ranges: part name -> (first, stop) vertex range in the dressed mesh.
    """

    template: torch.Tensor
    projection: torch.Tensor
    helper_vertices: torch.Tensor
    helper_deltas: torch.Tensor
    helper_anchor: torch.Tensor
    anchor_weight: torch.Tensor
    eye_cap: torch.Tensor
    eye_centres: torch.Tensor
    eye_radius: torch.Tensor
    lid_index: torch.Tensor
    triangles: np.ndarray
    colours: np.ndarray
    brows: torch.Tensor
    brow_paint: tuple[float, float, float, float]
    ranges: dict[str, tuple[int, int]]
    triangle_ranges: dict[str, tuple[int, int]]

    @property
    def num_face_vertices(self) -> int:
        return len(self.template)

    @property
    def num_vertices(self) -> int:
        """V + H + 2E: vertices of the dressed mesh."""
        return len(self.colours)

    @classmethod
    def for_rig(cls, rig, config: DressingConfig | None = None) -> "FaceDressing":
        """The dressing stored in a rig asset (tools/build_face_rig.py); a ValueError for a rig
        without one (it is not guessed from the face)."""
        config = config or DressingConfig()
        d = getattr(rig, "dressing", None)
        if not d:
            raise ValueError(f"rig {rig.name!r} carries no dressing; rebuild it with tools/build_face_rig.py")
        v, tri = np.asarray(rig.vertices, np.float64), np.asarray(rig.triangles, np.int64)
        deltas = np.asarray(rig.deltas, np.float64).reshape(rig.num_blendshapes, -1)  # (52, V*3)
        gram = deltas @ deltas.T
        gram += _RIDGE * np.trace(gram) / len(gram) * np.eye(len(gram))
        projection = np.linalg.solve(gram, deltas)  # (52, V*3)

        d = _with_crowns(d, rig.blendshape_names)
        # Helper parts contiguous in PARTS order (the asset stores them by source index).
        part = d["dressing_part"].astype(np.int64)
        h_tris = d["dressing_triangles"].astype(np.int64)
        shown = ((part != PARTS.index("hair")) | config.hair) & ((part != PARTS.index("neck")) | config.neck)  # (H,)
        h_tris = h_tris[shown[h_tris].all(1)]
        order = np.where(shown)[0][np.argsort(part[shown], kind="stable")]
        inverse = -np.ones(len(part), dtype=np.int64)
        inverse[order] = np.arange(len(order))
        h_tris = inverse[h_tris]
        h_tris = h_tris[np.argsort(part[order][h_tris[:, 0]], kind="stable")]
        part = part[order]
        hv = d["dressing_vertices"][order].astype(np.float64)
        hv[part == 0] += config.upper_teeth_offset
        hv[part == 2] += config.tongue_offset
        anchor = d["dressing_anchor"][order].astype(np.int64)
        lower = _lower_lashes(part, anchor, rig)
        if config.lower_lashes != 1.0:  # drawn toward their lids
            hv[lower] = v[anchor[lower]] + config.lower_lashes * (hv[lower] - v[anchor[lower]])

        face_v = len(v)
        h_col = _helper_colours(hv, part, d["teeth_material"][order], h_tris, config)
        if config.lower_lash_fade > 0 and len(lower):
            # Drawn solid, a lash card is a band; real lower lashes are sparse hairs over skin, so the
            # skin shows more toward their tips.
            reach = np.linalg.norm(hv[lower] - v[anchor[lower]], axis=1)
            fade = config.lower_lash_fade * reach / max(reach.max(), 1e-9)
            h_col[lower] += fade[:, None] * (np.asarray(config.skin, np.float32) - h_col[lower])
        roots = d.get("face_hair", np.zeros(len(v), np.float32)) * (config.hair_roots if config.hair else 0.0)
        face_col = _face_colours(rig, tri, d["face_brow"] * config.painted_brows, config, roots)

        ranges, tri_ranges, start, tstart = {}, {}, face_v, len(tri)
        for k, name in enumerate(PARTS[:_HELPERS]):
            count = int((part == k).sum())
            tcount = int((part[h_tris[:, 0]] == k).sum())
            if count == 0 and name in _OPTIONAL:  # turned off, or a rig built before it
                continue
            ranges[name], tri_ranges[name] = (start, start + count), (tstart, tstart + tcount)
            start, tstart = start + count, tstart + tcount
        # Rigs built before the neck have no weights: every anchored vertex (a lash) follows fully.
        anchor_weight = d.get("dressing_anchor_weight", np.ones(len(order), np.float32))[order] * (anchor >= 0)
        h_tris = h_tris + face_v
        if "neck" in ranges:
            # The neck's copies of face vertices: its triangles use the face vertex itself (one welded
            # skin: normals, occlusion and creases run across the junction without a seam).
            a, b = ranges["neck"]
            neck = np.arange(a - face_v, b - face_v)
            copy = neck[(anchor[neck] >= 0) & (np.abs(hv[neck] - v[anchor[neck]]).max(1) < 1e-7)] + face_v
            weld = np.arange(start)
            weld[copy] = anchor[copy - face_v]
            h_tris = weld[h_tris]
        all_tris, all_cols = [tri, h_tris], [face_col, h_col]

        centres = np.asarray(d["eye_centres"], np.float64)
        radius = np.asarray(d["eye_radius"], np.float64)
        cap, cap_tris, cap_col = eyeball_cap(np.array([config.pupil, config.iris, [0.6 * c for c in config.iris],
                                                       config.sclera], np.float32))
        lids = []
        for k, (c, r) in enumerate(zip(centres, radius)):
            # Lid skin in front of the eyeball's centre plane and outside it at rest.
            dist = np.linalg.norm(v - c, axis=1)
            near = (dist >= r) & (dist < 1.6 * r) & (v[:, 2] > c[2]) & (np.sign(v[:, 0]) == np.sign(c[0]))
            lids.append(np.where(near)[0])
            if config.eyes:
                name = PARTS[_HELPERS + k]
                ranges[name], tri_ranges[name] = (start, start + len(cap)), (tstart, tstart + len(cap_tris))
                all_tris.append(cap_tris + start)
                all_cols.append(cap_col)
                start, tstart = start + len(cap), tstart + len(cap_tris)
        width = min(len(x) for x in lids)
        lid_index = np.stack([x[np.argsort(np.linalg.norm(v[x] - c, axis=1), kind="stable")[:width]]
                              for x, c in zip(lids, centres)])
        f32 = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
        return cls(
            template=f32(v), projection=f32(projection), helper_vertices=f32(hv),
            helper_deltas=f32(d["dressing_deltas"][:, order]),
            helper_anchor=torch.as_tensor(anchor), anchor_weight=f32(anchor_weight),
            eye_cap=f32(cap) if config.eyes else torch.zeros(0, 3), eye_centres=f32(centres),
            eye_radius=f32(radius), lid_index=torch.as_tensor(lid_index),
            triangles=np.concatenate(all_tris).astype(np.int64),
            colours=np.concatenate(all_cols).astype(np.float32).clip(0, 1),
            brows=f32(np.pad(np.zeros((face_v, 3)) if config.painted_brows else brow_coordinates(v, centres, _rest_normals(v, tri)),
                             ((0, start - face_v), (0, 0)))),
            brow_paint=(*config.brow, config.brow_opacity),
            ranges=ranges, triangle_ranges=tri_ranges,
        )

    def __call__(self, vertices, gaze=None):
        """Face vertices (T, V, 3) or (V, 3), optional gaze (T, 2) or (2,) rad -> dressed vertices
        (T, V + H + 2E, 3) or (V + H + 2E, 3); numpy in, numpy out; torch in, torch out."""
        is_numpy = not isinstance(vertices, torch.Tensor)
        verts = torch.as_tensor(np.asarray(vertices) if is_numpy else vertices)
        single = verts.ndim == 2
        verts = verts[None] if single else verts
        if verts.ndim != 3 or verts.shape[1:] != (self.num_face_vertices, 3):
            raise ValueError(
                f"face vertices must have shape (T, {self.num_face_vertices}, 3) or ({self.num_face_vertices}, 3), "
                f"got {tuple(torch.as_tensor(np.asarray(vertices) if is_numpy else vertices).shape)}"
            )
        dtype, dev = (verts.dtype if verts.is_floating_point() else torch.float32), verts.device
        verts = verts.to(dtype)
        t_count = len(verts)
        if gaze is None:
            gaze = torch.zeros(t_count, 2, dtype=dtype, device=dev)
        gaze = torch.as_tensor(np.asarray(gaze) if not isinstance(gaze, torch.Tensor) else gaze).to(dev, dtype)
        gaze = gaze[None] if gaze.ndim == 1 else gaze
        if gaze.shape != (t_count, 2):
            raise ValueError(f"gaze must have shape ({t_count}, 2) [yaw, pitch] in radians, got {tuple(gaze.shape)}")
        out = dress(verts, gaze.clamp(-_MAX_GAZE, _MAX_GAZE), *(
            x.to(dev, dtype) if x.is_floating_point() else x.to(dev)
            for x in (self.template, self.projection, self.helper_vertices, self.helper_deltas, self.helper_anchor,
                      self.anchor_weight, self.eye_cap, self.eye_centres, self.eye_radius, self.lid_index)
        ))
        out = out[0] if single else out
        return out.cpu().numpy() if is_numpy else out

    def two_sided(self) -> np.ndarray:
        """(F + G,) bool over `triangles`: True where the back face may show (`TWO_SIDED` parts)."""
        out = np.zeros(len(self.triangles), bool)
        for name in TWO_SIDED:
            if name in self.triangle_ranges:
                out[slice(*self.triangle_ranges[name])] = True
        return out

    def skin(self) -> tuple[np.ndarray, np.ndarray]:
        """The skin as one mesh: dressed-vertex indices (S,) of the face and the neck (if worn), and
        its triangles (G, 3) indexing them (the face's and the neck's, welded at the junction)."""
        index, tris = [np.arange(self.num_face_vertices)], [self.triangles[: len(self.triangles) - self._tail()]]
        if "neck" in self.ranges:
            index.append(np.arange(*self.ranges["neck"]))
            tris.append(self.triangles[slice(*self.triangle_ranges["neck"])])
        index = np.concatenate(index)
        compact = -np.ones(self.num_vertices, dtype=np.int64)
        compact[index] = np.arange(len(index))
        return index, compact[np.concatenate(tris)]

    def _tail(self) -> int:
        """Triangles after the face's own: the parts'."""
        return sum(b - a for a, b in self.triangle_ranges.values())

    def neutral(self) -> np.ndarray:
        """(V + H + 2E, 3) the dressed template."""
        return self(self.template.numpy())


def dress(verts, gaze, template, projection, helper_v, helper_d, anchor, anchor_weight, cap, centres, radius, lid_index):
    """Face vertices (T, V, 3) and gaze (T, 2) rad -> dressed vertices (T, V + H + 2E, 3).

    The rest are FaceDressing's buffers: template (V, 3), projection (52, V*3), helper_v (H, 3),
    helper_d (52, H, 3), anchor (H,), anchor_weight (H,), cap (E, 3) unit eyeball, centres (2, 3),
    radius (2,), lid_index (2, L)."""
    disp = verts - template  # (T, V, 3)
    weights = estimate_weights(disp, projection)  # (T, 52)
    helpers = helper_v + torch.einsum("tk,khc->thc", weights, helper_d)  # (T, H, 3)
    anchored = anchor >= 0  # lashes on their lid, the neck under the face's boundary
    helpers[:, anchored] = helper_v[anchored] + anchor_weight[anchored, None] * disp[:, anchor[anchored]]
    parts = [verts, helpers]
    if len(cap):
        rot = gaze_rotation(gaze)  # (T, 3, 3)
        ball = cap @ rot.transpose(1, 2)  # (T, E, 3) unit, looking along the gaze
        for k in range(2):
            # Shrink just inside the nearest lid vertex: a closing lid covers the eyeball.
            lid = (verts[:, lid_index[k]] - centres[k]).norm(dim=-1).amin(-1)  # (T,)
            r = torch.minimum(radius[k].expand_as(lid), lid - _LID_CLEARANCE)
            parts.append(centres[k] + r[:, None, None] * ball)
    return torch.cat(parts, 1)


def _lower_lashes(part: np.ndarray, anchor: np.ndarray, rig) -> np.ndarray:
    """Indices of the lower lashes' helper vertices: anchored (anchor (H,) face vertex indices) to a
    lid vertex that the blink moves less than 2 mm (the upper lid travels about a centimetre). Their
    length from the lid is `DressingConfig.lower_lashes`."""
    lash = np.where(part == PARTS.index("lashes"))[0]
    names = list(rig.blendshape_names)
    blink = np.abs(np.asarray(rig.deltas)[[names.index("eyeBlinkLeft"), names.index("eyeBlinkRight")], :, 1]).max(0)  # (V,)
    return lash[blink[anchor[lash]] < 0.002]


def _with_crowns(d: dict, names) -> dict:
    """The asset's helper arrays with each jaw's helper shell replaced by crowns and gum
    (`face.teeth`), moved by the affine fit of the shell's own unit deltas (the rig's units
    `names`), the lower ones yielding to a smile (`teeth.smile_yield`); adds `teeth_material`
    (H,): `teeth.TOOTH`, `CERVIX` or `GUM` on the teeth, 0 elsewhere."""
    part, hv = d["dressing_part"].astype(np.int64), d["dressing_vertices"].astype(np.float64)
    tris, deltas = d["dressing_triangles"].astype(np.int64), d["dressing_deltas"].astype(np.float32)
    anchor = d["dressing_anchor"].astype(np.int64)
    weight = d.get("dressing_anchor_weight", np.ones(len(part), np.float32)).astype(np.float32)
    keep = part > PARTS.index("lower_teeth")
    index = -np.ones(len(part), np.int64)
    index[keep] = np.arange(keep.sum())
    out = {"v": [hv[keep]], "part": [part[keep]], "tris": [index[tris[keep[tris].all(1)]]], "deltas": [deltas[:, keep]],
           "anchor": [anchor[keep]], "weight": [weight[keep]], "material": [np.zeros(keep.sum(), np.int64)]}
    count = int(keep.sum())
    for code in (PARTS.index("upper_teeth"), PARTS.index("lower_teeth")):
        shell = part == code
        v, t, material = dentition_arch(hv[shell], upper=code == PARTS.index("upper_teeth"))
        out["v"].append(v)
        out["part"].append(np.full(len(v), code))
        out["tris"].append(t + count)
        motion = affine_motion(hv[shell], deltas[:, shell], v)
        if code == PARTS.index("lower_teeth"):
            motion = motion + smile_yield(v, names)
        out["deltas"].append(motion.astype(np.float32))
        out["anchor"].append(-np.ones(len(v), np.int64))
        out["weight"].append(np.zeros(len(v), np.float32))
        out["material"].append(material)
        count += len(v)
    return {**d, "dressing_vertices": np.concatenate(out["v"]), "dressing_part": np.concatenate(out["part"]),
            "dressing_triangles": np.concatenate(out["tris"]), "dressing_deltas": np.concatenate(out["deltas"], 1),
            "dressing_anchor": np.concatenate(out["anchor"]), "dressing_anchor_weight": np.concatenate(out["weight"]),
            "teeth_material": np.concatenate(out["material"])}


def _helper_colours(hv: np.ndarray, part: np.ndarray, material: np.ndarray, h_tris: np.ndarray,
                    config: DressingConfig) -> np.ndarray:
    """sRGB colours (H, 3) of the helper vertices hv (H, 3) of parts `part` (H,), teeth materials
    `material` (H,) (`face.teeth`), triangles h_tris (helper indices): teeth, gums and tongue darken
    toward the back of the mouth (the lips shade them)."""
    teeth = part <= PARTS.index("lower_teeth")
    depth = np.maximum(hv[teeth & (material != GUM), 2].max() - hv[:, 2], 0)  # m behind the incisors' front
    shade = 1 - config.mouth_shade * (1 - np.exp(-depth / config.mouth_falloff))[:, None]
    palette = np.array([config.teeth, config.teeth, config.tongue, config.lashes, config.hair_colour, config.skin], np.float32)
    colours = palette[part]
    colours[teeth & (material == CERVIX)] *= np.asarray(config.tooth_neck, np.float32)
    colours[teeth & (material == GUM)] = config.gums
    h_col = colours * np.where((part <= 2)[:, None], shade, 1.0)
    hair = part == PARTS.index("hair")
    if hair.any():
        h_col[hair] = hair_colours(hv[hair], h_tris[hair[h_tris[:, 0]]] - np.argmax(hair), config)
    return h_col


def _rest_normals(v: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Unit vertex normals (V, 3) of the face at rest."""
    return vertex_normals(torch.as_tensor(v)[None], torch.as_tensor(tri))[0].numpy()


def _face_colours(rig, tri: np.ndarray, brow_mask: np.ndarray, config: DressingConfig, roots: np.ndarray) -> np.ndarray:
    """sRGB colours (V, 3) of the face: skin, tinted lips (its 'lips' region), painted brows
    (brow_mask (V,) in [0, 1]) and the hair's colour toward the hairline (roots (V,) in [0, 1])."""
    skin = np.asarray(config.skin, np.float32)
    face_col = np.broadcast_to(skin, (len(rig.vertices), 3)).copy()
    if "lips" in rig.masks:
        face_col += lip_tint(rig.masks["lips"], tri)[:, None] * (np.asarray(config.lips) - skin)
    brow = config.brow_opacity * brow_mask.astype(np.float32)[:, None]
    face_col += brow * (np.asarray(config.brow) - face_col)
    face_col += roots.astype(np.float32)[:, None] * (np.asarray(config.hair_colour, np.float32) - face_col)
    return face_col
