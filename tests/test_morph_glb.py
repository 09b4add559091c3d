"""The rig as a glTF with its ARKit blendshapes as morph targets and their weight curves (exports.arkit_rig_glb, gltf)."""

import json
import struct

import numpy as np
import pytest

from blendtalk.animation import Animation
from blendtalk.face.dressing import FaceDressing
from blendtalk.face.rig import load_rig
from blendtalk.render.exports import arkit_rig_glb
from blendtalk.render.gltf import MorphPart, write_morph_glb
from blendtalk.render.renderer import RenderConfig, dressing_config

T = 12


@pytest.fixture(scope="module")
def rig():
    return load_rig()


def animation(rig) -> Animation:
    w = np.random.default_rng(0).uniform(0, 1, (T, rig.num_blendshapes)).astype(np.float32)  # (T, 52)
    return Animation(vertices=rig(w).astype(np.float32), triangles=rig.triangles, audio=np.zeros(T * 533, np.float32),
                     fps=30, sample_rate=16_000, arkit_weights=w, arkit_names=tuple(rig.blendshape_names))


def read_glb(path):
    """(JSON document, binary chunk) of a .glb."""
    data = path.read_bytes()
    magic, version, total = struct.unpack_from("<4sII", data)
    assert (magic, version, total) == (b"glTF", 2, len(data))
    n = struct.unpack_from("<I", data, 12)[0]
    doc = json.loads(data[20:20 + n])
    assert data[20 + n + 4:20 + n + 8] == b"BIN\0"
    return doc, data[20 + n + 8:]


def accessor(doc, blob, index) -> np.ndarray:
    """An accessor's (count, width) array, sparse ones included (zeros where no bufferView)."""
    acc = doc["accessors"][index]
    width = {"SCALAR": 1, "VEC3": 3}[acc["type"]]
    dtype = {5126: "<f4", 5125: "<u4"}[acc["componentType"]]

    def read(view_index, dt, count, offset=0):
        return np.frombuffer(blob, dt, count, doc["bufferViews"][view_index].get("byteOffset", 0) + offset)

    out = (read(acc["bufferView"], dtype, acc["count"] * width, acc.get("byteOffset", 0)).copy() if "bufferView" in acc
           else np.zeros(acc["count"] * width, dtype)).reshape(acc["count"], width)
    if "sparse" in acc:
        sp = acc["sparse"]
        rows = read(sp["indices"]["bufferView"], "<u4", sp["count"])
        out[rows] = read(sp["values"]["bufferView"], dtype, sp["count"] * width).reshape(-1, width)
    return out


def test_bare_rig_glb_plays_the_arkit_curves(rig, tmp_path):
    anim = animation(rig)
    path = arkit_rig_glb(anim, tmp_path / "face.glb", rig)
    doc, blob = read_glb(path)
    mesh = doc["meshes"][0]
    assert mesh["extras"]["targetNames"] == list(rig.blendshape_names) and len(mesh["primitives"][0]["targets"]) == 52
    sampler = doc["animations"][0]["samplers"][0]
    times, keys = accessor(doc, blob, sampler["input"]), accessor(doc, blob, sampler["output"]).reshape(-1, 52)
    assert np.isclose(times[-1, 0], T / 30) and np.array_equal(keys[:T], anim.arkit_weights)
    base = accessor(doc, blob, 0)
    targets = np.stack([accessor(doc, blob, t["POSITION"]) for t in mesh["primitives"][0]["targets"]])  # (52, V, 3)
    pose = base + np.einsum("k,kvc->vc", keys[3], targets)  # what a viewer shows at frame 3
    assert np.abs(pose - anim.vertices[3]).max() < 1e-5
    assert path.stat().st_size < 1_500_000  # sparse targets: about a quarter of the dense 2.8 MB


def test_dressed_rig_glb_has_colours_and_stays_small(rig, tmp_path):
    dressing = FaceDressing.for_rig(rig, dressing_config(RenderConfig()))
    doc, _ = read_glb(arkit_rig_glb(animation(rig), tmp_path / "dressed.glb", rig, dressing))
    prim = doc["meshes"][0]["primitives"][0]
    assert "COLOR_0" in prim["attributes"] and doc["accessors"][0]["count"] == dressing.num_vertices
    assert (tmp_path / "dressed.glb").stat().st_size < 2_500_000


def test_morph_glb_checks_its_inputs(tmp_path):
    base, tri, targets = np.zeros((3, 3)), np.array([[0, 1, 2]]), np.zeros((2, 3, 3))
    write_morph_glb(tmp_path / "still.glb", [MorphPart("face", base, tri, targets)], ["a", "b"])  # a still rigged mesh
    with pytest.raises(ValueError, match="K names"):
        write_morph_glb(tmp_path / "x.glb", [MorphPart("face", base, tri, targets)], ["a"])
    with pytest.raises(ValueError, match=r"\(T, 2\)"):
        write_morph_glb(tmp_path / "x.glb", [MorphPart("face", base, tri, targets)], ["a", "b"], weights=np.zeros((4, 3)))
    with pytest.raises(ValueError, match="below N=3"):
        write_morph_glb(tmp_path / "x.glb", [MorphPart("face", base, tri + 1, targets)], ["a", "b"])
