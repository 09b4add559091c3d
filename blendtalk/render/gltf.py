"""Binary glTF (.glb) writing: the container, and the rig with its 52 ARKit units as morph targets,
one writer for the app's `_rig.glb` download (played by the ARKit curves) and the live page's face
(driven frame by frame, `tools/build_live_glb.py`). The export of an animation with one morph target
per frame (`exports.write_glb`) writes through the same container.

glTF 2.0, metres, +y up, +z out of the face. Every part of the mesh is a node with one mesh whose
targets are named as the rig's units (`extras.targetNames`, which Blender and three.js read).
Targets are sparse accessors (a unit moves part of the face): about a quarter of the dense size.
Vertex colours (COLOR_0) are linear RGB.

`posable=True` lays the face out for a client that turns the head and eyes itself:

    node "head"  (translation: the head pivot, `head_motion.head_pivot`; rotate it by the head rotation)
      ├─ node "face"       mesh: face, teeth, tongue, lashes, hair, neck (it turns with the head)
      ├─ node "left_eye"   (translation: the eyeball's centre; rotate it by the gaze)
      └─ node "right_eye"  ...

Target k holds dressing(template + delta_k) - dressing(template) for each part: exact for one unit
at weight 1, and for sums as far as the dressing is linear in the units (its teeth, tongue, lashes
and neck are; the eyeballs' lid clearance is approximately so).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..expression.head_motion import head_pivot
from .files import atomic_path, output_path

EYE_PARTS = ("left_eye", "right_eye")  # the dressing's parts that turn with the gaze
MIN_TARGET_OFFSET = 1e-7  # m: morph-target offsets below this are not stored (sparse targets)
MATERIAL = {"name": "face", "pbrMetallicRoughness": {"baseColorFactor": [1, 1, 1, 1], "metallicFactor": 0.0,
                                                     "roughnessFactor": 0.6}}


def accessor(view: int, offset: int, count: int, kind: str, lo=None, hi=None) -> dict:
    """A FLOAT accessor of `count` elements of type `kind` ("VEC3", "SCALAR") in buffer view `view`;
    lo/hi: its per-component min and max (required for POSITION)."""
    acc = {"bufferView": view, "byteOffset": offset, "componentType": 5126, "count": count, "type": kind}
    if lo is not None:
        acc["min"], acc["max"] = [float(v) for v in lo], [float(v) for v in hi]
    return acc


def buffer_views(blobs: Sequence[np.ndarray], targets: Sequence[int | None]) -> tuple[list[dict], int]:
    """Buffer views of the `blobs` laid back to back (each with its glTF `target`, or none), and their total bytes."""
    views, offset = [], 0
    for blob, target in zip(blobs, targets):
        view = {"buffer": 0, "byteOffset": offset, "byteLength": blob.nbytes}
        if target is not None:
            view["target"] = target
        views.append(view)
        offset += blob.nbytes  # every blob is 4-byte data, so offsets stay 4-byte aligned
    return views, offset


def write_glb_file(path: Path, doc: dict, blobs: Sequence[np.ndarray], nbytes: int) -> Path:
    """Write a .glb of the glTF JSON `doc` and its binary chunk, the `blobs` back to back (`nbytes` in all)."""
    text = json.dumps(doc, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)  # chunks are 4-byte aligned; JSON pads with spaces
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<4sII", b"glTF", 2, 12 + 8 + len(text) + 8 + nbytes))
        f.write(struct.pack("<I4s", len(text), b"JSON") + text)
        f.write(struct.pack("<I4s", nbytes, b"BIN\0"))
        for blob in blobs:  # streamed: the binary chunk is never assembled in memory
            f.write(memoryview(np.ascontiguousarray(blob)))
    return path


@dataclass(frozen=True)
class MorphPart:
    """One node of a morph-target glTF.

    base (N, 3) metres; triangles (F, 3) indices below N; targets (K, N, 3) offsets from base;
    colours (N, 3) linear RGB in [0, 1] or None; origin (3,): where the node sits (its vertices are
    stored relative to it, so a client rotating the node turns the part about this point).
    """

    name: str
    base: np.ndarray
    triangles: np.ndarray
    targets: np.ndarray
    colours: np.ndarray | None = None
    origin: np.ndarray | None = None


def write_morph_glb(
    path: str | os.PathLike,
    parts: Sequence[MorphPart],
    names: Sequence[str],
    weights: np.ndarray | None = None,
    fps: float = 30.0,
    root: tuple[str, np.ndarray] | None = None,
    morph_normals: bool = False,
) -> Path:
    """A binary glTF 2.0 of `parts` sharing K morph targets named `names` and, optionally, their curves.

    weights (T, K) per frame at `fps`, keyed LINEAR over T/fps seconds on every part (the animation
    "blendshapes"; None: a still, rigged mesh). root (name, (3,) position): a parent node the parts
    hang under, at that position (None: the parts are the scene's nodes). morph_normals: each target
    also carries its change of the smooth vertex normals, so that a client shades a moved face as
    moved (a raised brow's new slope) instead of with the rest pose's normals. Any glTF viewer or
    engine can drive the targets live or play the curves.
    """
    path = output_path(path, ".glb")
    k = len(names)
    if not parts or k == 0:
        raise ValueError("need at least one part and one target name")
    blobs, views, accessors, meshes, nodes = [], [], [], [], []

    def view(blob: np.ndarray) -> int:  # every blob is 4-byte data, so offsets stay 4-byte aligned
        views.append({"buffer": 0, "byteOffset": sum(b.nbytes for b in blobs), "byteLength": blob.nbytes})
        blobs.append(np.ascontiguousarray(blob))
        return len(views) - 1

    def add(acc: dict) -> int:
        accessors.append(acc)
        return len(accessors) - 1

    top = np.zeros(3) if root is None else np.asarray(root[1], np.float64)
    for part in parts:
        base, targets, tri = _checked(part, k)
        origin = np.zeros(3, np.float32) if part.origin is None else np.asarray(part.origin, np.float32)
        base = base - origin  # (N, 3) in the node's frame
        primitive = {"attributes": {"POSITION": add(accessor(view(base), 0, len(base), "VEC3", base.min(0), base.max(0)))},
                     "indices": add({"bufferView": view(tri), "componentType": 5125, "count": tri.size, "type": "SCALAR"}),
                     "mode": 4}
        rest_normals = _normals(base, tri)
        primitive["attributes"]["NORMAL"] = add(accessor(view(rest_normals), 0, len(base), "VEC3"))
        primitive["targets"] = [{"POSITION": add(_sparse_target(delta, view))} for delta in targets]
        if morph_normals:
            for target, delta in zip(primitive["targets"], targets):
                target["NORMAL"] = add(_sparse_target(_normals(base + delta, tri) - rest_normals, view))
        meshes.append({"name": part.name, "primitives": [primitive], "weights": [0.0] * k,
                       "extras": {"targetNames": list(names)}})
        node = {"mesh": len(meshes) - 1, "name": part.name}
        if part.origin is not None or root is not None:
            node["translation"] = [float(x) for x in origin - top]
        nodes.append(node)
    doc = {"asset": {"version": "2.0", "generator": "blendtalk"}, "scene": 0}
    if root is None:
        doc["scenes"] = [{"nodes": list(range(len(nodes)))}]
    else:
        nodes = [{"name": root[0], "translation": [float(x) for x in top],
                  "children": list(range(1, len(nodes) + 1))}] + nodes
        doc["scenes"] = [{"nodes": [0]}]
    doc["nodes"], doc["meshes"] = nodes, meshes
    if weights is not None:
        doc["animations"] = [_curves(weights, fps, k, view, add, [i for i, n in enumerate(nodes) if "mesh" in n])]
        doc["asset"]["extras"] = {"fps": float(fps), "frames": len(weights)}
    for part, mesh in zip(parts, meshes):  # colours last in the buffer, after the curves
        if part.colours is not None:
            primitive, n = mesh["primitives"][0], len(part.base)
            primitive["attributes"]["COLOR_0"] = add(accessor(view(np.asarray(part.colours, np.float32).reshape(n, 3)),
                                                              0, n, "VEC3"))
            primitive["material"] = 0
            doc["materials"] = [MATERIAL]
    offset = sum(b.nbytes for b in blobs)
    doc |= {"accessors": accessors, "bufferViews": views, "buffers": [{"byteLength": offset}]}
    return write_glb_file(path, doc, blobs, offset)


def write_rig_glb(
    path: str | os.PathLike,
    rig,
    dressing=None,
    weights: np.ndarray | None = None,
    fps: float = 30.0,
    posable: bool = False,
    morph_normals: bool = False,
) -> Path:
    """The rig with its 52 ARKit units as morph targets (1.0 MB bare, 1.6 MB dressed), played by
    `weights` (T, 52) at `fps` if given. dressing: the rig's `FaceDressing`, for teeth, eyes, lashes,
    hair and the painted colours (its parts follow each unit). posable: the head and eye nodes of the
    module docstring (needs `dressing`), for a client that turns them itself. morph_normals: targets
    carry normal offsets too (`write_morph_glb`)."""
    if posable and dressing is None:
        raise ValueError("a posable rig glTF needs the dressing: its eyes are the dressing's parts")
    base, targets = np.asarray(rig.vertices, np.float32), np.asarray(rig.deltas, np.float32)  # (V, 3), (52, V, 3)
    if dressing is None:
        parts = [MorphPart("face", base, rig.triangles, targets)]
        return write_morph_glb(path, parts, rig.blendshape_names, weights, fps, morph_normals=morph_normals)
    import torch

    from .shading import srgb_to_linear

    dressed = dressing(base[None] + targets)  # (52, N, 3): each unit alone, at weight 1
    base = dressing(base)  # (N, 3)
    targets = dressed - base
    colours = srgb_to_linear(torch.as_tensor(dressing.colours)).numpy()  # (N, 3): glTF vertex colours are linear
    if not posable:
        parts = [MorphPart("face", base, dressing.triangles, targets, colours)]
        return write_morph_glb(path, parts, rig.blendshape_names, weights, fps, morph_normals=morph_normals)
    pivot = head_pivot(rig.vertices).astype(np.float32)
    origins = [pivot] + [dressing.eye_centres[i].numpy().astype(np.float32) for i in range(len(EYE_PARTS))]
    parts = []
    for (name, a, b, ta, tb), origin in zip(posable_parts(dressing), origins):
        tri = dressing.triangles[ta:tb] - a
        if tri.min() < 0 or tri.max() >= b - a:
            raise ValueError(f"the dressing's part {name} has triangles outside its vertex range")
        parts.append(MorphPart(name, base[a:b], tri, targets[:, a:b], colours[a:b], origin))
    return write_morph_glb(path, parts, rig.blendshape_names, weights, fps, root=("head", pivot), morph_normals=morph_normals)


def posable_parts(dressing) -> list[tuple[str, int, int, int, int]]:
    """The parts of a posable rig glTF as (name, first vertex, stop, first triangle, stop) in the
    dressing's order: "face" (the face and every part that does not turn with the gaze), then the eyes."""
    ranges = [("face", 0, min(dressing.ranges[p][0] for p in EYE_PARTS), 0, min(dressing.triangle_ranges[p][0] for p in EYE_PARTS))]
    return ranges + [(p, *dressing.ranges[p], *dressing.triangle_ranges[p]) for p in EYE_PARTS]


def _checked(part: MorphPart, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """part's base (N, 3) and targets (K, N, 3) as float32, triangles (F, 3) as uint32; raises on bad shapes."""
    base, targets = np.asarray(part.base, np.float32), np.asarray(part.targets, np.float32)
    tri = np.asarray(part.triangles).astype(np.uint32)
    n = len(base)
    if base.ndim != 2 or base.shape[1] != 3 or targets.shape != (k, n, 3):
        raise ValueError(f"part {part.name}: need base (N, 3), targets (K, N, 3) and K names, "
                         f"got {base.shape}, {targets.shape}, {k}")
    if tri.ndim != 2 or tri.shape[1] != 3 or not len(tri) or int(tri.max()) >= n:
        raise ValueError(f"part {part.name}: triangles must be (F, 3) indices below N={n}, got {tri.shape}")
    return base, targets, tri


def _normals(base: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """(N, 3) float32 smooth vertex normals of the rest pose, so viewers shade it smooth."""
    import torch

    from ..face.geometry import vertex_normals

    return vertex_normals(torch.as_tensor(base), torch.as_tensor(tri.astype(np.int64))).numpy().astype(np.float32)


def _sparse_target(delta: np.ndarray, view) -> dict:
    """A morph target's POSITION accessor (delta (N, 3)) storing only the vertices it moves."""
    moved = np.flatnonzero(np.abs(delta).max(-1) > MIN_TARGET_OFFSET).astype(np.uint32)
    acc = {"componentType": 5126, "count": len(delta), "type": "VEC3",
           "min": [float(x) for x in delta.min(0)], "max": [float(x) for x in delta.max(0)]}
    if len(moved):  # no sparse and no bufferView: all zeros
        acc["sparse"] = {"count": len(moved), "indices": {"bufferView": view(moved), "componentType": 5125},
                         "values": {"bufferView": view(delta[moved])}}
    return acc


def _curves(weights: np.ndarray, fps: float, k: int, view, add, nodes: list[int]) -> dict:
    """The animation keying every node in `nodes` by weights (T, K), the last frame held to T/fps."""
    weights = np.asarray(weights, np.float32)
    if weights.ndim != 2 or weights.shape[1] != k or not len(weights) or not fps > 0:
        raise ValueError(f"weights must be (T, {k}) with T > 0 and fps > 0, got {weights.shape} at {fps}")
    times = (np.arange(len(weights) + 1) / fps).astype(np.float32)  # (T + 1,)
    keys = np.concatenate([weights, weights[-1:]])  # (T + 1, K)
    first = add(accessor(view(times), 0, len(times), "SCALAR", times[:1], times[-1:]))
    add(accessor(view(keys), 0, keys.size, "SCALAR"))
    return {"name": "blendshapes", "samplers": [{"input": first, "output": first + 1, "interpolation": "LINEAR"}],
            "channels": [{"sampler": 0, "target": {"node": node, "path": "weights"}} for node in nodes]}
