"""Teeth built tooth by tooth along the arches of the rig's helper teeth, with gums.

MakeHuman's helper teeth are one low-poly shell per jaw (68 vertices): on screen an open mouth
showed a grey slab with a zigzag edge, like a gum shield. `dentition_arch` keeps where the helpers
sit (their arch seen from above, their bite level) and puts in their place one crown per tooth,
incisors to second premolars (molars stay in the cheeks' shade), sized from dental anatomy tables,
with a scalloped gum band above (upper) or below (lower) the crowns that a broad smile uncovers.
Both are pure geometry of the helpers' rest vertices; the face units move them with the affine
motion that best fits the helpers' own deltas (`affine_motion`: the jaw turns nearly rigidly, so
the lower teeth ride it within 0.2 mm).

A smile moves the lower canines and premolars back a little (`smile_yield`), where the rig's
stretched lower lip would otherwise pass behind them with the jaw wide open.

Layout of one arch: the crowns (midline outward, right then left), then the gum band.
"""

from __future__ import annotations

import numpy as np

# Crowns from the midline back, per jaw: (mesiodistal width, crown height, labio-lingual thickness)
# in m, textbook means (Wheeler's Dental Anatomy), and how the biting end ends: 0 an edge
# (incisors), 1 a point (canines), 2 a flat table (premolars). The lower heights are the part
# above the gum, about 0.8 of the anatomical crown: longer necks reached through the chin's skin.
UPPER_CROWNS = ((0.0085, 0.0105, 0.0070, 0), (0.0065, 0.0090, 0.0060, 0), (0.0075, 0.0100, 0.0080, 1),
                (0.0070, 0.0085, 0.0090, 2), (0.0065, 0.0085, 0.0090, 2))
LOWER_CROWNS = ((0.0050, 0.0072, 0.0060, 0), (0.0055, 0.0076, 0.0060, 0), (0.0070, 0.0088, 0.0075, 1),
                (0.0070, 0.0068, 0.0075, 2), (0.0070, 0.0064, 0.0080, 2))
# How far each crown's biting end sits from the central incisor's, m (the lateral incisor is
# shorter; the back teeth rise with the curve of the bite).
EDGE_STEP = (0.0, 0.0008, 0.0002, 0.0006, 0.0009)
# Lean of each crown, tan of the angle: front teeth stand proclined (the gum end further in than the
# biting end), which also keeps their necks behind the lips and the chin's skin.
LEAN = (0.30, 0.28, 0.18, 0.08, 0.05)
# Crown cross-section per ring, from the gum (0) to the biting end (1): height fraction, width and
# thickness factors per end shape (edge, point, table). Incisors thin to an edge; a canine narrows to
# its cusp; back teeth keep their table.
RINGS = (0.0, 0.45, 0.88, 1.0)
WIDTH = ((0.75, 0.97, 1.0, 0.97), (0.72, 0.95, 0.85, 0.45), (0.78, 0.97, 1.0, 0.85))
THICKNESS = ((1.0, 0.8, 0.38, 0.18), (1.0, 0.85, 0.62, 0.35), (0.9, 1.0, 0.97, 0.8))
SECTION = 8  # points around a crown's cross-section: each triangle costs every frame's render
SQUARENESS = 3.0  # superellipse exponent of the cross-section: flat faces, rounded corners
GUM_OVERLAP = 0.0008  # m of crown the gum covers at a tooth's middle
PAPILLA = 0.0028  # m the gum reaches down between two teeth
GUM_DEPTH = 0.004  # m of gum band beyond the deepest margin, into the lip
GUM_SINK = 0.0004  # m the gum's margin sits behind the crowns' front
GUM_RECEDE = 0.002  # m the band's far edge leans back further, following the jaw bone under the lip
CONTACT = 0.95  # crown spacing over width: neighbours touch at their widest, as in a real arch
GUM_STEP = 0.0025  # m of arch between the gum band's columns
# A smile draws the lower lip's sides back over the canines; the rig's blendshapes add linearly, so
# with the jaw wide open the skin passed behind them. The lower canines and premolars yield instead,
# this far back (m) per unit of their side's smile, fading in from 4 to 14 mm off the midline.
SMILE_YIELD = 0.0025
SMILE_YIELD_SPAN = (0.004, 0.014)
TOOTH, CERVIX, GUM = 0, 1, 2  # per-vertex material of `dentition`


def arch_outline(vertices: np.ndarray, bins: int = 36) -> tuple[np.ndarray, np.ndarray]:
    """The outer arch of helper teeth vertices (H, 3) m (x across, y up, z forward) seen from above:
    angles (A,) rad from +z toward +x, from the midline out, and the radius (A,) m there, from a
    centre on the midline at the arch's back. Symmetric: each side's outermost point per angle."""
    centre = np.array([0.0, vertices[:, 2].min()])
    rel = vertices[:, [0, 2]] - centre
    angle = np.abs(np.arctan2(rel[:, 0], rel[:, 1]))
    radius = np.linalg.norm(rel, axis=1)
    edges = np.linspace(0, angle.max() + 1e-9, bins + 1)
    which = np.digitize(angle, edges) - 1
    keep = [b for b in range(bins) if (which == b).any()]
    out_a = np.array([angle[which == b][np.argmax(radius[which == b])] for b in keep])
    out_r = np.array([radius[which == b].max() for b in keep])
    # The outline is convex: a bin whose outermost vertex lies inside its neighbours' chord is an
    # inner vertex (the helpers are sparse), not the arch.
    pts = np.stack([np.sin(out_a) * out_r, np.cos(out_a) * out_r], 1)
    hull = [0]
    for i in range(1, len(pts)):
        while len(hull) >= 2:
            a, b = pts[hull[-2]], pts[hull[-1]]
            if (b[0] - a[0]) * (pts[i][1] - a[1]) - (b[1] - a[1]) * (pts[i][0] - a[0]) > 0:  # b lies inside
                hull.pop()
            else:
                break
        hull.append(i)
    return out_a[hull], out_r[hull]


class _Arch:
    """Points on an arch outline by arc length from the midline (one side, x >= 0)."""

    def __init__(self, angles: np.ndarray, radii: np.ndarray, back_z: float):
        fine = np.linspace(0, angles[-1], 400)
        r = np.interp(fine, angles, radii)
        self.xz = np.stack([np.sin(fine) * r, back_z + np.cos(fine) * r], 1)  # (P, 2)
        self.s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(self.xz, axis=0), axis=1))])

    @property
    def length(self) -> float:
        return float(self.s[-1])

    def _point(self, s: np.ndarray) -> np.ndarray:
        """(N,) arc lengths, negative ones on the other side -> (N, 2) [x, z]."""
        a = np.abs(s)
        xz = np.stack([np.interp(a, self.s, self.xz[:, 0]), np.interp(a, self.s, self.xz[:, 1])], 1)
        xz[:, 0] *= np.where(s < 0, -1.0, 1.0)
        return xz

    def at(self, s) -> tuple[np.ndarray, np.ndarray]:
        """Arc lengths (N,) m in [0, length] -> points (N, 2) [x, z] and unit tangents (N, 2)
        pointing away from the midline (across it at s = 0: the arch is symmetric)."""
        s = np.clip(np.asarray(s, np.float64), 0, self.length)
        ds = 0.0005
        tangent = self._point(s + ds) - self._point(s - ds)
        return self._point(s), tangent / np.linalg.norm(tangent, axis=1, keepdims=True)


def _crown(width, height, thickness, shape, lean) -> tuple[np.ndarray, np.ndarray]:
    """One crown in its own frame (u along the arch, n outward from the arch, h from the gum toward
    the bite): vertices (R*SECTION + 2, 3) [u, n, h] with the labial face at n = 0 at the biting end,
    leaning in by `lean` (tan) toward the gum, and triangles counter-clockwise seen from outside."""
    theta = np.linspace(0, 2 * np.pi, SECTION, endpoint=False)
    c, s = np.cos(theta), np.sin(theta)
    cu = np.sign(c) * np.abs(c) ** (2 / SQUARENESS)
    cn = np.sign(s) * np.abs(s) ** (2 / SQUARENESS)
    rings = []
    for k, h in enumerate(RINGS):
        half_w, half_t = width / 2 * WIDTH[shape][k], thickness / 2 * THICKNESS[shape][k]
        # The labial face stays on the arch (n = 0); a thinning crown loses its lingual side.
        rings.append(np.stack([half_w * cu, -half_t + half_t * cn, np.full(SECTION, h * height)], 1))
    verts = np.concatenate([*rings, [[0.0, -thickness / 2 * THICKNESS[shape][0], 0.0]],
                            [[0.0, -thickness / 2 * THICKNESS[shape][-1], height * (1.02 if shape == 1 else 1.0)]]])
    verts[:, 1] -= lean * (height - verts[:, 2])
    j = np.arange(SECTION)
    k = (j + 1) % SECTION
    tris = []
    for r in range(len(RINGS) - 1):
        a, b = r * SECTION, (r + 1) * SECTION
        tris += [np.stack([a + j, b + j, b + k], 1), np.stack([a + j, b + k, a + k], 1)]
    base, tip = len(verts) - 2, len(verts) - 1
    top = (len(RINGS) - 1) * SECTION
    tris += [np.stack([np.full(SECTION, base), j, k], 1), np.stack([np.full(SECTION, tip), top + k, top + j], 1)]
    return verts, np.concatenate(tris)


def dentition_arch(helper: np.ndarray, upper: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crowns and gum along one jaw's helper teeth vertices (H, 3) m at rest.

    Returns vertices (D, 3), triangles (G, 3) counter-clockwise from outside, and a material code
    (D,) per vertex (`TOOTH`, `CERVIX`: a crown's gum-side ring, `GUM`)."""
    angles, radii = arch_outline(helper)
    arch = _Arch(angles, radii, helper[:, 2].min())
    crowns = UPPER_CROWNS if upper else LOWER_CROWNS
    down = -1.0 if upper else 1.0  # from the gum toward the bite
    # The bite level: the central incisors' end, the helper's lowest (upper) or highest (lower) front point.
    front = np.abs(helper[:, 0]) < crowns[0][0]
    bite = helper[front, 1].min() if upper else helper[front, 1].max()
    # margin, per crown: arc where it starts, its centre and end, the height of its neck and of its
    # biting end, its lean: what the gum band follows.
    verts, tris, kinds, margin = [], [], [], []
    start = 0.0
    for (width, height, thickness, shape), step, lean in zip(crowns, EDGE_STEP, LEAN):
        centre = start + CONTACT * width / 2
        if centre > arch.length:
            break
        point, tangent_xz = arch.at([centre])
        (x, z), (tx, tz) = point[0], tangent_xz[0]
        normal = np.array([-tz, tx])  # outward, horizontal: the tangent turned toward the outside
        edge = bite - down * step
        local, ltris = _crown(width, height, thickness, shape, lean)
        for mirror in (False, True):
            sign = -1.0 if mirror else 1.0
            # A mirror image winds the other way: across the midline, and upside down for the upper jaw.
            t = ltris[:, ::-1] if mirror != upper else ltris
            tangent = np.array([tx * sign, tz])
            out = np.array([normal[0] * sign, normal[1]])
            pos = np.stack([sign * x + local[:, 0] * tangent[0] + local[:, 1] * out[0],
                            edge - down * (height - local[:, 2]),
                            z + local[:, 0] * tangent[1] + local[:, 1] * out[1]], 1)
            tris.append(t + sum(len(v) for v in verts))
            verts.append(pos)
            kind = np.full(len(pos), TOOTH)
            kind[:SECTION] = CERVIX
            kinds.append(kind)
        margin.append((start, centre, start + CONTACT * width, edge - down * height, edge, lean))
        start += CONTACT * width
    # Gum band: columns along the arch; its margin arcs over each crown and dips between them.
    half = np.linspace(0, start, int(np.ceil(start / GUM_STEP)) + 1)  # one side's columns, m of arch
    level_half = np.empty(len(half))
    for i, s in enumerate(half):
        a, _, b, cervix, *_ = next((m for m in margin if m[0] <= s <= m[2]), margin[-1])
        u = np.clip((s - a) / (b - a), 0, 1)
        level_half[i] = cervix + down * (GUM_OVERLAP - (GUM_OVERLAP + PAPILLA) * (1 - np.sin(np.pi * u)) ** 3)
    # Both sides from the one: the band is exactly symmetric.
    arc = np.concatenate([half[:0:-1], half])  # (C,) from the left end to the right
    sign = np.concatenate([-np.ones(len(half) - 1), np.ones(len(half))])
    level = np.concatenate([level_half[:0:-1], level_half])
    xz, tangent = arch.at(arc)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], 1)
    far = (level.max() if upper else level.min()) - down * GUM_DEPTH
    rows = np.array([0.0, 0.3, 0.7, 1.0])[:, None]  # (4, 1) from the margin to the far edge
    heights = level + rows * (far - level)  # (4, C)
    # Behind the crowns' front wherever it is: they lean in toward the gum, smoothly from tooth to tooth.
    centres, edges, leans = (np.array([m[k] for m in margin]) for k in (1, 4, 5))
    lean = np.interp(arc, centres, leans) * np.abs(heights - np.interp(arc, centres, edges))  # (4, C)
    sink = GUM_SINK + lean + rows * GUM_RECEDE  # (4, C)
    gx = sign * (xz[:, 0] - sink * normal[:, 0])
    gz = xz[:, 1] - sink * normal[:, 1]
    band = np.stack([gx, heights, gz], -1).reshape(-1, 3)
    n_cols = len(arc)
    r = np.arange(heights.shape[0] - 1)[:, None] * n_cols
    c = np.arange(n_cols - 1)[None]
    a, b = (r + c).ravel(), (r + n_cols + c).ravel()
    quads = [np.stack([a, a + 1, b + 1], 1), np.stack([a, b + 1, b], 1)]
    g_tris = np.concatenate(quads)
    if not upper:  # the band grows downward: keep its front counter-clockwise
        g_tris = g_tris[:, ::-1]
    offset = sum(len(v) for v in verts)
    verts.append(band)
    tris.append(g_tris + offset)
    kinds.append(np.full(len(band), GUM))
    return np.concatenate(verts), np.concatenate(tris), np.concatenate(kinds)


def affine_motion(rest: np.ndarray, deltas: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Per-unit deltas (K, H, 3) of vertices rest (H, 3) -> deltas (K, P, 3) at points (P, 3): the
    least-squares affine field of each unit (exact for a rigid turn such as the jaw's)."""
    design = np.concatenate([rest, np.ones((len(rest), 1))], 1)  # (H, 4)
    fit, *_ = np.linalg.lstsq(design, deltas.transpose(1, 0, 2).reshape(len(rest), -1), rcond=None)  # (4, K*3)
    out = np.concatenate([points, np.ones((len(points), 1))], 1) @ fit  # (P, K*3)
    return out.reshape(len(points), len(deltas), 3).transpose(1, 0, 2)


def smile_yield(points: np.ndarray, names) -> np.ndarray:
    """Deltas (K, P, 3) for lower crowns at points (P, 3) under the rig's units `names` (K,): back
    (-z) by SMILE_YIELD under mouthSmileLeft (+x side) and mouthSmileRight (-x), 0 elsewhere."""
    names = list(names)
    out = np.zeros((len(names), len(points), 3))
    near, far = SMILE_YIELD_SPAN
    for unit, side in (("mouthSmileLeft", 1.0), ("mouthSmileRight", -1.0)):
        if unit in names:
            t = np.clip((side * points[:, 0] - near) / (far - near), 0.0, 1.0)
            out[names.index(unit), :, 2] = -SMILE_YIELD * t * t * (3 - 2 * t)
    return out
