"""The file renderer's look, baked for the live page: what `render.renderer.Renderer` computes per
vertex, laid out so that the browser can redraw it from the 52 ARKit weights alone.

The file path shades each frame from its vertices: a material fixed on the template (albedo after the
mouth-cavity tint and ambient occlusion, and a sheen), crease darkening from the frame's new
concavity, and fine wrinkle lines where the skin is squeezed (`render.wrinkles`). The page only gets
weights, so it does what game engines do with wrinkle maps: each ARKit unit applied alone to the
live face gives its own per-vertex wrinkle amounts and crease, measured offline by the renderer's own
functions, and the page blends them by the received weights:

    squeeze(w) = sum_k S_k(w_k)     S_k piecewise linear through (0, 0) and the unit's squeeze at
                                    `WRINKLE_LEVELS`; summed before the lines' onset, because units
                                    that each squeeze too little to draw a line do together
    amounts(w) = lines(squeeze(w))  the module's own onset ramp and zone mask (`Wrinkles.lines`)
    crease(w)  = sum_k w_k C_k      C_k: the unit's new concavity (m, smoothed: `Renderer.creases`), linear to first order
    brow(w)    = B + sum_k w_k D_k  B: rest-pose brow coordinates, D_k: the unit's shift of them
                                    (`face.brows.BrowRide`, linear in the weights)
    rise(w)    = sum_k w_k R_k      R_k (2,): how far the unit raises the skin beside the [left, right]
                                    nasolabial fold (m); exact, because the rig is linear and the
                                    vertices that give the head's pose move with no unit
    fold(w)    = depth(rise(w)) * line   the module's own ramp (`Wrinkles.fold_depths`), spread on
                                    the static per-vertex fold line of each side (`nasolabial_folds`)

then draws them with the same line and fold pattern (`render.wrinkles.wrinkle_glsl`), the same per-pixel
brows (`face.brows.brow_glsl`, from each vertex's rest-pose brow coordinates), the same lights, camera,
Blinn-Phong sheen and sRGB encoding (live/web/live.js). The wrinkle zones and channels come from
whatever `render.wrinkles` measures (`Wrinkles.squeeze`, `Wrinkles.lines`), so a rebuild picks new
zones up.

Written as JSON next to the GLB (`tools/build_live_glb.py`), arrays as base64 little-endian float32 /
uint32, per GLB part (`render.gltf.posable_parts`) in the part's vertex order.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import torch

from ..face.brows import brow_glsl
from ..face.geometry import vertex_normals
from ..render.gltf import posable_parts
from ..render.renderer import BACK_FACE_LIGHT, CREASE_FLOOR, CREASE_MIN, SHININESS_SQUARINGS
from ..render.wrinkles import wrinkle_glsl

LOOK_VERSION = 3  # 2: the nasolabial folds; 3: brows drawn per pixel
WRINKLE_LEVELS = (0.25, 0.5, 0.75, 1.0)  # unit weights at which each unit's line amounts are measured
MIN_SQUEEZE = 2e-3  # squeeze below this is not stored (a tenth of the earliest onset of lines)
# Share of a unit's opposite motion's squeeze taken off as stretch: 1 over-cancels (the squeeze
# spreads over rings by a maximum, so the stretch reaches wider than it acts), 0 lets a lowered brow
# add lines to a raised one; 0.5 halves the mean error against the renderer on the emotions' frames.
STRETCH_SHARE = 0.5
MIN_BROW_RIDE = 2e-5  # m: brow coordinate shifts below this are not stored (a fiftieth of the brow's soft edge)
MIN_FOLD_LINE = 1e-4  # fold line weights below this are not stored (a 0.005% darkening at most)


def _b64(array: np.ndarray, dtype) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).astype(np.dtype(dtype).newbyteorder("<")).tobytes()).decode()


@torch.inference_mode()
def unit_squeeze(rig, renderer, levels=WRINKLE_LEVELS) -> np.ndarray:
    """(K, L, V, C) signed skin squeeze (`Wrinkles.squeeze`, < 0 where the unit stretches the skin) of
    each of the rig's K units applied alone at each weight in `levels` (L,), in the C channels the
    wrinkles measure ([along x, along y] today)."""
    base = torch.as_tensor(rig.vertices, dtype=torch.float32)
    deltas = torch.as_tensor(rig.deltas, dtype=torch.float32)  # (K, V, 3)
    # Signed: the unit's squeeze less a share of the squeeze of its opposite motion (about what the
    # unit stretches), so that a unit that stretches the skin (a lowered brow on the forehead) takes back
    # what another squeezes (a raised inner brow), as the renderer's sum over the moved face does.
    per_level = [renderer.wrinkles.squeeze(base + level * deltas) - STRETCH_SHARE * renderer.wrinkles.squeeze(base - level * deltas)
                 for level in levels]  # L x (K, V, C)
    return torch.stack(per_level, 1).cpu().numpy()


@torch.inference_mode()
def unit_creases(rig, renderer) -> np.ndarray:
    """(K, V) new concavity (m, > 0 in a crease) of each unit applied alone at weight 1, against
    the rest face, as the renderer measures it for its crease darkening (over the skin, a neck
    included; the face's V come first)."""
    base = torch.as_tensor(rig.vertices, dtype=torch.float32)
    faces = base + torch.as_tensor(rig.deltas, dtype=torch.float32)  # (K, V, 3)
    v, skin = renderer.num_vertices, renderer.skin_index
    dressed = renderer.dressing(faces) if renderer.dressing is not None else faces
    normals = vertex_normals(dressed, renderer.triangles)
    return renderer.creases(dressed[:, skin], normals[:, skin])[:, :v].cpu().numpy()


@torch.inference_mode()
def unit_brow_ride(rig, renderer) -> np.ndarray:
    """(K, V, 2) how far each unit applied alone at weight 1 moves each vertex's brow coordinates
    (`face.brows.BrowRide`, linear in the vertices, so a blend's is the weighted sum); zeros
    for a renderer without per-pixel brows."""
    v = renderer.num_vertices
    if renderer.brow_ride is None:
        return np.zeros((rig.num_blendshapes, v, 2), np.float32)
    base = torch.as_tensor(rig.vertices, dtype=torch.float32)
    faces = base + torch.as_tensor(rig.deltas, dtype=torch.float32)  # (K, V, 3)
    return (renderer.brow_ride(faces) - renderer.brow_ride(base[None]))[..., :2].cpu().numpy()


@torch.inference_mode()
def unit_fold_rise(rig, renderer) -> np.ndarray:
    """(K, 2) m that each of the rig's K units applied alone at weight 1 raises the skin beside the
    [left, right] nasolabial fold (`Wrinkles.fold_rise`, the renderer's own measure); the rise of a
    blend is the weighted sum (linear rig, head pose from vertices no unit moves)."""
    base = torch.as_tensor(rig.vertices, dtype=torch.float32)
    return renderer.wrinkles.fold_rise(base + torch.as_tensor(rig.deltas, dtype=torch.float32)).cpu().numpy()


def _sparse(values: np.ndarray, floor: float) -> dict:
    """values (K, V, ...) -> per unit the vertices where any entry reaches `floor`, and their values."""
    out = []
    for unit in values:
        flat = unit.reshape(len(unit), -1)
        keep = np.flatnonzero(np.abs(flat).max(1) >= floor)
        out.append({"count": int(len(keep)), "index": _b64(keep, np.uint32), "values": _b64(flat[keep], np.float32)})
    return out


def bake_look(rig, renderer) -> dict:
    """The JSON-ready look of `renderer` (the file path's `Pipeline.renderer(size)`, for a dressed
    `rig`) for the live page: camera, lights, material per GLB part, and the per-unit wrinkle
    amounts and creases of the face part."""
    if renderer.dressing is None or renderer.wrinkles is None:
        raise ValueError("the live look needs a dressed rig with wrinkle zones (Renderer.for_rig of a rig with a dressing)")
    cfg, cam = renderer.config, renderer.camera
    rot = cam.rotation.double().cpu().numpy()  # world -> camera
    centre = cam.centre.double().cpu().numpy()
    count = len(renderer.light_intensities)
    material = renderer.material.cpu().numpy()  # (V+H, 4) linear albedo after cavity tint and occlusion, sheen
    parts = {name: {"first": a, "count": b - a, "material": _b64(material[a:b], np.float32)}
             for name, a, b, _, _ in posable_parts(renderer.dressing)}
    wr = renderer.wrinkles
    squeeze = unit_squeeze(rig, renderer)  # (K, L, V, C)
    k, levels, v, channels = squeeze.shape
    with torch.inference_mode():  # full squeeze everywhere: the lines reach the mask
        mask = wr.lines(torch.full((1, v, channels), 1e9, device=wr.onset.device))[0].cpu().numpy()
    parts["face"] |= {
        "face_vertices": v,
        "phase": _b64(wr.phase.cpu().numpy(), np.float32),  # (V, 2) line phases in rest-pose coordinates
        "wrinkle_channels": channels,
        "wrinkle_mask": _b64(mask, np.float32),  # (V, C) where the skin shows lines
        "wrinkle_onset": wr.onset.cpu().tolist(), "wrinkle_full": wr.full.cpu().tolist(),
        "brows": _b64(renderer.brows[:v].cpu().numpy(), np.float32),  # (V, 3) rest-pose brow coordinates (`face.brows`)
        "brow_ride": _sparse(unit_brow_ride(rig, renderer), MIN_BROW_RIDE),  # per unit (n, 2) m
        "wrinkle_levels": list(WRINKLE_LEVELS),
        # per unit: vertices, then per vertex L levels x C channels of squeeze
        "wrinkles": _sparse(squeeze.transpose(0, 2, 1, 3), MIN_SQUEEZE),
        "creases": _sparse(unit_creases(rig, renderer)[..., None], CREASE_MIN),
    }
    if wr.folds is not None:
        side = np.asarray(wr.folds.side)
        line = wr.fold_line.cpu().numpy()[:, None] * np.stack([side == 0, side == 1], 1)  # (V, 2) per fold
        parts["face"] |= {
            "fold_coordinate": _b64(wr.fold_coordinate.cpu().numpy(), np.float32),  # (V,) across the fold, half-widths
            "fold_line": _sparse(line[None], MIN_FOLD_LINE)[0],  # where each fold's crease may show, (n, 2)
            "fold_rise": unit_fold_rise(rig, renderer).tolist(),  # (K, 2) m per unit at weight 1
            "fold_onset": wr.config.fold_lift[0], "fold_full": wr.config.fold_lift[1],
        }
    return {
        "format": "blendtalk-live-look", "version": LOOK_VERSION, "units": list(rig.blendshape_names),
        "size": cfg.size,
        # The file camera: looks down its -z from `distance` in front of the template's centre.
        "camera": {"position": (centre + rot.T @ np.array([0, 0, cam.distance])).tolist(), "target": centre.tolist(),
                   "up": (rot.T @ np.array([0.0, 1, 0])).tolist(), "fov_deg": cfg.fov_deg,
                   "near": cam.depth_near, "far": cam.depth_far},
        "background": list(cfg.background),  # sRGB
        "lights": renderer.light_matrix[:, :count].T.cpu().numpy().tolist(),  # camera space, unit, toward the light
        "halfways": renderer.light_matrix[:, count:].T.cpu().numpy().tolist(),
        "intensities": renderer.light_intensities.cpu().numpy().tolist(),
        "ambient": cfg.ambient, "back_light": BACK_FACE_LIGHT, "shininess": 2 ** SHININESS_SQUARINGS,
        "crease": {"strength": cfg.crease_strength * 1000, "floor": CREASE_FLOOR},  # darkening per m of new concavity
        "wrinkle": {"strength": renderer.wrinkle_config.strength, "sharpness": renderer.wrinkle_config.sharpness,
                    "fold_strength": renderer.wrinkle_config.fold_strength if wr.folds is not None else 0.0},
        # the renderer's own line and fold pattern (with the `wrinkle_sharpen` it calls): the page compiles this text
        "wrinkle_glsl": wrinkle_glsl(renderer.wrinkle_config.sharpness),
        "brow_glsl": brow_glsl(), "brow_tint": renderer.brow_tint.cpu().tolist(),  # albedo factor of full paint
        "parts": parts,
    }


def write_look(path: str | Path, rig, renderer) -> Path:
    """Write `bake_look` as JSON to path."""
    path = Path(path)
    path.write_text(json.dumps(bake_look(rig, renderer), separators=(",", ":")) + "\n")
    return path


def blend(look: dict, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the page computes from one frame's weights (K,): the face part's wrinkle amounts (V, C)
    and crease (V,) m, for checking the bake against the renderer (and the page against this)."""
    face = look["parts"]["face"]
    v, c, levels = face["face_vertices"], face["wrinkle_channels"], np.array([0.0, *face["wrinkle_levels"]])
    squeeze, crease = np.zeros((v, c)), np.zeros(v)
    for w, unit, fold in zip(np.asarray(weights, np.float64), face["wrinkles"], face["creases"]):
        if w <= 0:
            continue
        if unit["count"]:
            idx = np.frombuffer(base64.b64decode(unit["index"]), "<u4")
            vals = np.frombuffer(base64.b64decode(unit["values"]), "<f4").reshape(len(idx), len(levels) - 1, c)
            vals = np.concatenate([np.zeros((len(idx), 1, c)), vals], 1)  # (n, L+1, C) from weight 0
            j = min(int(np.searchsorted(levels, w, side="right")) - 1, len(levels) - 2)  # segment [levels[j], levels[j+1]]
            f = (w - levels[j]) / (levels[j + 1] - levels[j])
            squeeze[idx] += vals[:, j] + f * (vals[:, j + 1] - vals[:, j])
        if fold["count"]:
            idx = np.frombuffer(base64.b64decode(fold["index"]), "<u4")
            crease[idx] += w * np.frombuffer(base64.b64decode(fold["values"]), "<f4")
    onset, full = np.array(face["wrinkle_onset"]), np.array(face["wrinkle_full"])
    ramp = np.clip((squeeze - onset) / (full - onset), 0, 1)
    mask = np.frombuffer(base64.b64decode(face["wrinkle_mask"]), "<f4").reshape(v, c)
    return ramp * ramp * (3 - 2 * ramp) * mask, crease


def blend_folds(look: dict, weights: np.ndarray) -> np.ndarray:
    """What the page computes from one frame's weights (K,) for the nasolabial folds: (V, 2) per face
    vertex [fold coordinate in half-widths, fold depth], as `Wrinkles.attributes` gives them
    (zeros if the look has no folds)."""
    face = look["parts"]["face"]
    v = face["face_vertices"]
    out = np.zeros((v, 2))
    if "fold_rise" not in face:
        return out
    rise = np.clip(np.asarray(weights, np.float64), 0, None) @ np.asarray(face["fold_rise"])  # (2,) m, as the page: units at weight > 0
    ramp = np.clip((rise - face["fold_onset"]) / (face["fold_full"] - face["fold_onset"]), 0, 1)
    depth = ramp * ramp * (3 - 2 * ramp)
    out[:, 0] = np.frombuffer(base64.b64decode(face["fold_coordinate"]), "<f4")
    line = face["fold_line"]
    idx = np.frombuffer(base64.b64decode(line["index"]), "<u4")
    out[idx, 1] = np.frombuffer(base64.b64decode(line["values"]), "<f4").reshape(-1, 2) @ depth
    return out


def blend_brows(look: dict, weights: np.ndarray) -> np.ndarray:
    """What the page computes from one frame's weights (K,) for the brows: (V, 3) brow coordinates
    per face vertex, as `face.brows.BrowRide` gives them (the rest coordinates for an older look)."""
    face = look["parts"]["face"]
    out = np.frombuffer(base64.b64decode(face["brows"]), "<f4").reshape(-1, 3).astype(np.float64)
    for w, unit in zip(np.asarray(weights, np.float64), face.get("brow_ride", [])):
        if w > 0 and unit["count"]:
            idx = np.frombuffer(base64.b64decode(unit["index"]), "<u4")
            out[idx, :2] += w * np.frombuffer(base64.b64decode(unit["values"]), "<f4").reshape(-1, 2)
    return out
