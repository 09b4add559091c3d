"""The face a live client draws: the dressed rig as a binary glTF whose morph targets are the 52 ARKit units.

Sent once; a live stream then carries only the 52 weights, the head rotation and the gaze per frame.
Layout (glTF 2.0, metres, +y up, +z out of the face):

    node "head"  (translation: the head pivot, `head_motion.head_pivot`; rotate it by the head rotation)
      ├─ node "face"       mesh: face, teeth, tongue, lashes, hair; 52 morph targets named as the rig's units
      ├─ node "left_eye"   (translation: the eyeball's centre; rotate it by the gaze) mesh with the same 52 targets
      └─ node "right_eye"  ...

Target k holds dressing(template + delta_k) - dressing(template) for each part: exact for one unit
at weight 1, and for sums as far as the dressing is linear in the units (its teeth, tongue and lashes
are; the eyeballs' lid clearance is approximately so). Targets are sparse accessors (a unit moves a
part of the face), about a quarter of the dense size. Vertex colours (COLOR_0) are linear RGB.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from ..expression.head_motion import head_pivot

EYE_PARTS = ("left_eye", "right_eye")
MIN_DELTA = 1e-7  # m: target entries below this are left out of the sparse accessors


def arkit_glb_bytes(rig, dressing) -> bytes:
    """The GLB (see the module docstring) of `rig` (with its 52 units) dressed by `dressing` (a FaceDressing)."""
    import torch

    from ..render.renderer import srgb_to_linear

    base = dressing.neutral().astype(np.float32)  # (N, 3)
    targets = (dressing(rig.vertices[None] + rig.deltas) - base[None]).astype(np.float32)  # (K, N, 3)
    colours = srgb_to_linear(torch.as_tensor(dressing.colours)).numpy().astype(np.float32)  # (N, 3)
    pivot = head_pivot(rig.vertices).astype(np.float32)
    eye_start = min(dressing.ranges[p][0] for p in EYE_PARTS)
    parts = [("face", 0, eye_start, 0, min(dressing.triangle_ranges[p][0] for p in EYE_PARTS), pivot)]
    for i, p in enumerate(EYE_PARTS):
        a, b = dressing.ranges[p]
        ta, tb = dressing.triangle_ranges[p]
        parts.append((p, a, b, ta, tb, dressing.eye_centres[i].numpy().astype(np.float32)))

    blobs: list[bytes] = []
    views, accessors, meshes, nodes = [], [], [], [{"name": "head", "translation": [float(x) for x in pivot], "children": []}]
    offset = 0

    def view(data: np.ndarray, target: int | None = None) -> int:
        nonlocal offset
        raw = np.ascontiguousarray(data).tobytes()
        v = {"buffer": 0, "byteOffset": offset, "byteLength": len(raw)}
        if target:
            v["target"] = target
        views.append(v)
        blobs.append(raw)
        offset += len(raw)  # all data is 4-byte: offsets stay aligned
        return len(views) - 1

    def accessor(**kw) -> int:
        accessors.append(kw)
        return len(accessors) - 1

    names = list(rig.blendshape_names)
    for name, a, b, ta, tb, origin in parts:
        pos = base[a:b] - origin  # (n, 3) in the node's frame
        tri = (dressing.triangles[ta:tb] - a).astype(np.uint32)
        if tri.min() < 0 or tri.max() >= b - a:
            raise ValueError(f"the dressing's part {name} has triangles outside its vertex range")
        p = accessor(bufferView=view(pos, 34962), componentType=5126, count=len(pos), type="VEC3",
                     min=[float(x) for x in pos.min(0)], max=[float(x) for x in pos.max(0)])
        idx = accessor(bufferView=view(tri.reshape(-1), 34963), componentType=5125, count=int(tri.size), type="SCALAR")
        col = accessor(bufferView=view(colours[a:b], 34962), componentType=5126, count=b - a, type="VEC3")
        target_refs = []
        for k in range(len(names)):
            d = targets[k, a:b]
            rows = np.flatnonzero(np.abs(d).max(1) > MIN_DELTA).astype(np.uint32)
            if len(rows) == 0:
                rows = np.zeros(1, np.uint32)  # glTF needs at least one sparse entry
            vals = d[rows]
            lo = np.minimum(vals.min(0), 0.0)
            hi = np.maximum(vals.max(0), 0.0)
            target_refs.append({"POSITION": accessor(
                componentType=5126, count=b - a, type="VEC3", min=[float(x) for x in lo], max=[float(x) for x in hi],
                sparse={"count": int(len(rows)), "indices": {"bufferView": view(rows), "componentType": 5125},
                        "values": {"bufferView": view(vals)}})})
        meshes.append({"name": name, "primitives": [{"attributes": {"POSITION": p, "COLOR_0": col}, "indices": idx,
                                                     "mode": 4, "material": 0, "targets": target_refs}],
                       "weights": [0.0] * len(names), "extras": {"targetNames": names}})
        nodes.append({"name": name, "mesh": len(meshes) - 1, "translation": [float(x) for x in origin - pivot]})
        nodes[0]["children"].append(len(nodes) - 1)
    doc = {
        "asset": {"version": "2.0", "generator": "blendtalk live", "extras": {"arkit_names": names}},
        "scene": 0, "scenes": [{"nodes": [0]}], "nodes": nodes, "meshes": meshes, "accessors": accessors,
        "materials": [{"name": "dressed face", "pbrMetallicRoughness": {"baseColorFactor": [1, 1, 1, 1],
                                                                         "metallicFactor": 0.0, "roughnessFactor": 0.6}}],
        "bufferViews": views, "buffers": [{"byteLength": offset}],
    }
    text = json.dumps(doc, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)
    body = b"".join(blobs)
    return (struct.pack("<4sII", b"glTF", 2, 12 + 8 + len(text) + 8 + len(body))
            + struct.pack("<I4s", len(text), b"JSON") + text + struct.pack("<I4s", len(body), b"BIN\0") + body)


def write_arkit_glb(path: str | Path, rig, dressing) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(arkit_glb_bytes(rig, dressing))
    tmp.replace(path)
    return path


def arkit_mapping_error(rig, fused: np.ndarray, arkit: np.ndarray) -> dict:
    """How far the ARKit-driven face is from the fused one: fused (T, V, 3) vertices, arkit (T, 52)
    weights -> mean and 95th-percentile vertex distance over all vertices and over the lips, in mm."""
    mapped = rig.vertices[None] + rig.displacement(arkit)  # (T, V, 3)
    dist = np.linalg.norm(mapped - fused, axis=-1) * 1e3  # (T, V) mm
    lips = dist[:, rig.mask("lips")]
    return {"mean_mm": round(float(dist.mean()), 3), "p95_mm": round(float(np.percentile(dist, 95)), 3),
            "lips_mean_mm": round(float(lips.mean()), 3), "lips_p95_mm": round(float(np.percentile(lips, 95)), 3),
            "frames": int(len(fused))}
