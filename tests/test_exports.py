import csv
import json
import logging
import struct
import zipfile

import numpy as np
import pytest

from blendtalk.render import exports
from blendtalk.animation import Animation
from blendtalk.render.exports import (
    FORMATS,
    LIVE_LINK_FACE_NAMES,
    LIVE_LINK_FACE_ROTATIONS,
    export_all,
    unavailable,
    write_arkit_csv,
    write_arkit_json,
    write_glb,
)
from blendtalk.render.files import atomic_path

ARKIT_NAMES = tuple(n[0].lower() + n[1:] for n in sorted(LIVE_LINK_FACE_NAMES))  # camelCase, rig-like order


def _animation(t: int = 5, arkit: bool = True, flame: bool = True) -> Animation:
    """An octahedron whose vertices move differently in every frame."""
    base = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], np.float32)
    tri = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    rng = np.random.default_rng(0)
    verts = base + 0.1 * rng.standard_normal((t, 6, 3)).astype(np.float32)  # (T, V, 3)
    weights = rng.uniform(-0.1, 1.1, (t, 52)).astype(np.float32)  # a little outside [0, 1] on purpose
    return Animation(
        verts, tri, np.zeros(int(t / 30 * 16_000), np.float32),
        arkit_weights=weights if arkit else None, arkit_names=ARKIT_NAMES if arkit else (),
        flame_params={"expr": rng.standard_normal((t, 10)).astype(np.float32),
                      "jaw_pose": np.zeros((t, 3), np.float32)} if flame else None,
    )


def _read_glb(path):
    """-> (json dict, binary chunk bytes), checking the GLB container on the way."""
    data = path.read_bytes()
    magic, version, total = struct.unpack_from("<4sII", data)
    assert (magic, version, total) == (b"glTF", 2, len(data))
    json_len, json_type = struct.unpack_from("<I4s", data, 12)
    assert json_type == b"JSON" and json_len % 4 == 0
    doc = json.loads(data[20 : 20 + json_len])
    bin_len, bin_type = struct.unpack_from("<I4s", data, 20 + json_len)
    assert bin_type == b"BIN\0" and bin_len == doc["buffers"][0]["byteLength"]
    return doc, data[28 + json_len : 28 + json_len + bin_len]


def _accessor_array(doc, binary, index):
    acc = doc["accessors"][index]
    view = doc["bufferViews"][acc["bufferView"]]
    width = {"SCALAR": 1, "VEC3": 3}[acc["type"]]
    dtype = {5126: np.float32, 5125: np.uint32}[acc["componentType"]]
    start = view["byteOffset"] + acc.get("byteOffset", 0)
    assert start + acc["count"] * width * 4 <= view["byteOffset"] + view["byteLength"]
    return np.frombuffer(binary, dtype, acc["count"] * width, start).reshape(acc["count"], width)


def test_export_all_writes_every_format_inside_out_dir(tmp_path):
    anim = _animation()
    out = export_all(anim, tmp_path / "out", stem="take-1")
    assert set(out) == set(FORMATS)
    assert all(p.parent == tmp_path / "out" and p.is_file() for p in out.values())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in out.values())  # no temps

    verts = np.load(out["npy"])
    assert verts.shape == (5, 6, 3) and verts.dtype == np.float32
    np.testing.assert_array_equal(verts, anim.vertices)

    flame = np.load(out["flame"], allow_pickle=False)
    np.testing.assert_array_equal(flame["expr"], anim.flame_params["expr"])
    assert float(flame["fps"]) == 30


def test_obj_zip_holds_one_mesh_per_frame(tmp_path):
    anim = _animation(t=12)
    path = export_all(anim, tmp_path, formats=("obj",))["obj"]
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        assert names == [f"frame_{t:04d}.obj" for t in range(12)]
        lines = z.read("frame_0007.obj").decode().splitlines()
    v = np.array([[float(x) for x in line.split()[1:]] for line in lines if line.startswith("v ")])
    f = np.array([[int(x) for x in line.split()[1:]] for line in lines if line.startswith("f ")])
    assert v.shape == (6, 3) and f.shape == (8, 3)
    np.testing.assert_allclose(v, anim.vertices[7], atol=1e-6)
    np.testing.assert_array_equal(f - 1, anim.triangles)
    trimesh = pytest.importorskip("trimesh")
    with zipfile.ZipFile(path) as z, z.open("frame_0003.obj") as fh:
        mesh = trimesh.load(fh, file_type="obj", process=False)
    assert len(mesh.vertices) == 6 and len(mesh.faces) == 8


def test_arkit_csv_live_link_face_layout(tmp_path):
    anim = _animation(t=35)
    path = export_all(anim, tmp_path, formats=("arkit_csv",))["arkit_csv"]
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    assert header == ["Timecode", "BlendShapeCount", *LIVE_LINK_FACE_NAMES, *LIVE_LINK_FACE_ROTATIONS]
    assert len(header) == 63 and len(body) == 35 and all(len(r) == 63 for r in body)
    assert body[0][:2] == ["00:00:00:00.000", "61"]
    assert body[31][0] == "00:00:01:01.000"  # frame 31 at 30 fps: second 1, frame 1
    jaw = header.index("JawOpen")
    k = ARKIT_NAMES.index("jawOpen")
    got = np.array([float(r[jaw]) for r in body])
    np.testing.assert_allclose(got, np.clip(anim.arkit_weights[:, k], 0, 1), atol=1e-6)
    assert all(float(v) == 0 for r in body for v in r[-9:])  # no head or eye rotations


def test_arkit_csv_matches_names_and_rejects_unknown(tmp_path):
    anim = _animation()
    partial = Animation(anim.vertices, anim.triangles, anim.audio,
                        arkit_weights=anim.arkit_weights[:, :2], arkit_names=("jawOpen", "EYEBLINKLEFT"))
    path = write_arkit_csv(partial, tmp_path / "p.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[2]["EyeBlinkLeft"]) == pytest.approx(np.clip(anim.arkit_weights[2, 1], 0, 1), abs=1e-6)
    assert float(rows[2]["MouthPucker"]) == 0  # curves the animation lacks are 0
    bad = Animation(anim.vertices, anim.triangles, anim.audio,
                    arkit_weights=anim.arkit_weights[:, :1], arkit_names=("smileBig",))
    with pytest.raises(ValueError, match="not an ARKit blendshape"):
        write_arkit_csv(bad, tmp_path / "bad.csv")
    assert not (tmp_path / "bad.csv").exists()


def test_arkit_json(tmp_path):
    anim = _animation()
    doc = json.loads(export_all(anim, tmp_path, formats=("arkit_json",))["arkit_json"].read_text())
    assert doc["fps"] == 30 and doc["names"] == list(ARKIT_NAMES)
    np.testing.assert_allclose(np.array(doc["frames"]), anim.arkit_weights, atol=1e-6)


@pytest.mark.parametrize("interpolation", ["STEP", "LINEAR"])
def test_glb_one_morph_target_per_frame(tmp_path, interpolation):
    anim = _animation(t=7)
    template = anim.vertices.mean(0)
    path = write_glb(anim, tmp_path / "a.glb", template=template, interpolation=interpolation)
    doc, binary = _read_glb(path)
    prim = doc["meshes"][0]["primitives"][0]
    assert len(prim["targets"]) == 7 == len(doc["meshes"][0]["weights"])
    assert len(doc["meshes"][0]["extras"]["targetNames"]) == 7
    base = _accessor_array(doc, binary, prim["attributes"]["POSITION"])
    np.testing.assert_allclose(base, template, atol=1e-6)
    faces = _accessor_array(doc, binary, prim["indices"]).reshape(-1, 3)
    np.testing.assert_array_equal(faces, anim.triangles)
    for t, target in enumerate(prim["targets"]):
        acc = doc["accessors"][target["POSITION"]]
        assert acc["count"] == 6 and "min" in acc and "max" in acc
        np.testing.assert_allclose(base + _accessor_array(doc, binary, target["POSITION"]), anim.vertices[t], atol=1e-6)
    sampler = doc["animations"][0]["samplers"][0]
    assert sampler["interpolation"] == interpolation
    assert doc["animations"][0]["channels"][0]["target"] == {"node": 0, "path": "weights"}
    times = _accessor_array(doc, binary, sampler["input"])[:, 0]
    np.testing.assert_allclose(times, np.arange(8) / 30, atol=1e-6)  # + one key: the clip lasts T / fps
    weights = _accessor_array(doc, binary, sampler["output"]).reshape(8, 7)  # (keys, targets)
    np.testing.assert_array_equal(weights[:7], np.eye(7))
    np.testing.assert_array_equal(weights[7], np.eye(7)[6])  # the last frame is held


def test_glb_loads_in_trimesh_with_the_rig(tmp_path):
    trimesh = pytest.importorskip("trimesh")
    from blendtalk.face.rig import load_rig

    rig = load_rig()
    weights = np.zeros((3, 52), np.float32)
    weights[:, rig.index("jawOpen")] = [0.0, 0.5, 1.0]
    anim = Animation(rig(weights), rig.triangles, np.zeros(1600, np.float32))
    path = export_all(anim, tmp_path, formats=("glb",), template=rig.vertices)["glb"]
    scene = trimesh.load(path, process=False)
    (mesh,) = scene.geometry.values()
    assert mesh.vertices.shape == rig.vertices.shape and len(mesh.faces) == len(rig.triangles)
    np.testing.assert_allclose(mesh.vertices, rig.vertices, atol=1e-6)  # the base mesh is the template
    doc, _ = _read_glb(path)
    assert len(doc["meshes"][0]["primitives"][0]["targets"]) == 3


def test_dressed_glb_carries_teeth_eyes_and_colours(tmp_path):
    """With the rig's dressing the glb is the face the video shows: the lower teeth follow jawOpen in
    the morph targets, the eyes turn with the gaze, brows and lips are in the vertex colours."""
    trimesh = pytest.importorskip("trimesh")
    from blendtalk.face.dressing import FaceDressing
    from blendtalk.face.rig import load_rig

    rig = load_rig()
    dressing = FaceDressing.for_rig(rig)
    weights = np.zeros((2, 52), np.float32)
    weights[1, rig.index("jawOpen")] = 1.0
    gaze = np.array([[0.0, 0.0], [0.3, 0.0]], np.float32)
    anim = Animation(rig(weights), rig.triangles, np.zeros(1600, np.float32), gaze=gaze)
    path = export_all(anim, tmp_path, formats=("glb",), template=rig.vertices, dressing=dressing)["glb"]
    (mesh,) = trimesh.load(path, process=False).geometry.values()
    assert mesh.vertices.shape == (dressing.num_vertices, 3) and len(mesh.faces) == len(dressing.triangles)
    doc, binary = _read_glb(path)
    primitive = doc["meshes"][0]["primitives"][0]
    colours = _accessor_array(doc, binary, primitive["attributes"]["COLOR_0"]).reshape(-1, 3)
    assert colours.shape == (dressing.num_vertices, 3) and colours.min() >= 0 and colours.max() <= 1
    assert colours[: rig.num_vertices].std(0).max() > 0.05  # brows and lips differ from the skin
    target = _accessor_array(doc, binary, primitive["targets"][1]["POSITION"]).reshape(-1, 3)  # frame 1 - base
    lo, hi = dressing.ranges["lower_teeth"]
    assert target[lo:hi, 1].mean() < -5e-3  # the lower teeth drop with the jaw
    eye_lo, eye_hi = dressing.ranges["left_eye"]
    assert np.abs(target[eye_lo:eye_hi]).max() > 1e-3  # the eye turned with the gaze
    # The neck hangs from the face's own boundary vertices (one surface for a viewer's smooth
    # normals), in the skin's colour.
    neck_lo, neck_hi = dressing.ranges["neck"]
    ta, tb = dressing.triangle_ranges["neck"]
    assert (mesh.faces[ta:tb] < rig.num_vertices).any(1).sum() > 40 and (mesh.faces[ta:tb] >= neck_lo).all(1).sum() > 300
    assert np.abs(colours[neck_lo:neck_hi] - colours[neck_lo]).max() < 1e-6


def test_missing_data_is_skipped_or_strict(tmp_path, caplog, monkeypatch):
    anim = _animation(arkit=False, flame=False)
    assert set(unavailable(anim)) == {"arkit_csv", "arkit_json", "flame"}
    with caplog.at_level(logging.WARNING, logger="blendtalk.render.exports"):
        out = export_all(anim, tmp_path)
    assert set(out) == {"npy", "obj", "glb"}
    assert "no ARKit weights" in caplog.text and "no FLAME parameters" in caplog.text
    with pytest.raises(ValueError, match="no ARKit weights"):
        export_all(anim, tmp_path / "strict", strict=True)
    assert not (tmp_path / "strict").exists() or not any((tmp_path / "strict").iterdir())
    with pytest.raises(ValueError, match="no ARKit weights"):
        write_arkit_csv(anim, tmp_path / "x.csv")
    monkeypatch.setattr(exports, "GLB_MAX_FRAMES", 3)
    assert "glb" in unavailable(_animation(t=5), ("glb",))
    with pytest.raises(ValueError, match="max_frames"):
        write_glb(_animation(t=5), tmp_path / "long.glb", max_frames=3)


@pytest.mark.parametrize("stem", ["../evil", "a/b", ".hidden", "", "x" * 65, "a.b", "/abs"])
def test_names_cannot_escape_out_dir(tmp_path, stem):
    with pytest.raises(ValueError, match="stem"):
        export_all(_animation(), tmp_path / "out", stem=stem)
    assert not (tmp_path / "out").exists()


def test_input_validation(tmp_path):
    anim = _animation()
    with pytest.raises(ValueError, match="unknown export formats"):
        export_all(anim, tmp_path, formats=("fbx",))
    with pytest.raises(ValueError, match="sequence"):
        export_all(anim, tmp_path, formats="npy")
    with pytest.raises(ValueError, match="template"):
        write_glb(anim, tmp_path / "a.glb", template=np.zeros((5, 3)))
    with pytest.raises(ValueError, match=".glb"):
        write_glb(anim, tmp_path / "a.gltf")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "a.npy"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["a.npy"] and target.read_bytes() == b"old"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert [p.name for p in tmp_path.iterdir()] == ["a.npy"] and target.read_bytes() == b"new"


def test_head_and_eye_rotations_fill_the_live_link_columns_and_the_json(tmp_path):
    anim = _animation(t=4)
    anim.head_rotation = np.array([[0.01, 0.02, 0.03]] * 4, np.float32)  # pitch, yaw, roll
    anim.gaze = np.array([[-0.05, 0.04]] * 4, np.float32)  # yaw, pitch
    path = write_arkit_csv(anim, tmp_path / "a.csv")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    got = dict(zip(rows[0], rows[1]))
    # Live Link Face's signs: yaw + toward the face's right, pitch + down (blendtalk's yaw and eye pitch reversed)
    assert [float(got[k]) for k in ("HeadYaw", "HeadPitch", "HeadRoll")] == pytest.approx([-0.02, 0.01, 0.03])
    for eye in ("Left", "Right"):
        assert [float(got[f"{eye}Eye{k}"]) for k in ("Yaw", "Pitch", "Roll")] == pytest.approx([0.05, -0.04, 0.0])
    doc = json.loads(write_arkit_json(anim, tmp_path / "a.json").read_text())
    assert doc["head_rotation"][0] == pytest.approx([0.01, 0.02, 0.03]) and doc["gaze"][0] == pytest.approx([-0.05, 0.04])
    assert "radians" in doc["rotation_convention"]
    still = _animation(t=4)
    with open(write_arkit_csv(still, tmp_path / "b.csv"), newline="") as f:
        assert all(float(v) == 0 for v in list(csv.reader(f))[1][-9:])


def test_glb_frames_are_posed_with_the_head_rotation(tmp_path):
    from blendtalk.expression.head_motion import head_pivot, rotate_head

    anim = _animation(t=3)
    anim.head_rotation = np.array([[0.0, 0.0, 0.0], [0.05, 0.0, 0.0], [0.0, -0.05, 0.02]], np.float32)
    base = anim.vertices[0]
    doc, binary = _read_glb(write_glb(anim, tmp_path / "a.glb", template=base))
    want = rotate_head(anim.vertices, anim.head_rotation, head_pivot(base)) - base
    for t in range(3):
        np.testing.assert_allclose(_accessor_array(doc, binary, 2 + t), want[t], atol=1e-6)