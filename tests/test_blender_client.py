"""The Blender add-on (blendtalk/clients/blender.py): its take reader, rotations and WebSocket client
here without Blender; the add-on itself inside Blender's Python when BLENDTALK_BPY_PYTHON names one
(a Python with the `bpy` wheel, `pip install bpy`: 370 MB, so not in requirements-dev.txt)."""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from blendtalk.animation import Animation
from blendtalk.clients import blender
from blendtalk.constants import ASSETS_DIR
from blendtalk.evaluation.browser import free_port
from blendtalk.expression.head_motion import rotation_matrix
from blendtalk.face.dressing import gaze_rotation
from blendtalk.live.stream import WebSocketBroadcast, encode
from blendtalk.render.exports import LIVE_LINK_FACE_NAMES, write_arkit_csv, write_arkit_json

ARKIT = tuple(n[0].lower() + n[1:] for n in LIVE_LINK_FACE_NAMES)


def _take(t: int = 40) -> Animation:
    rng = np.random.default_rng(1)
    base = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)
    return Animation(np.repeat(base[None], t, 0), np.array([[0, 1, 2]]), np.zeros(int(t / 30 * 16000), np.float32),
                     arkit_weights=rng.uniform(0, 1, (t, 52)).astype(np.float32), arkit_names=ARKIT,
                     head_rotation=rng.uniform(-0.2, 0.2, (t, 3)).astype(np.float32),
                     gaze=rng.uniform(-0.3, 0.3, (t, 2)).astype(np.float32))


def test_json_and_csv_takes_read_as_written(tmp_path):
    anim = _take()
    for path in (write_arkit_json(anim, tmp_path / "a.json"), write_arkit_csv(anim, tmp_path / "a.csv")):
        take = blender.read_take(str(path))
        order = [take["names"].index(n) for n in ARKIT]  # the CSV keeps Live Link Face's order
        assert take["fps"] == 30 and len(take["frames"]) == 40
        np.testing.assert_allclose(np.array(take["frames"])[:, order], anim.arkit_weights, atol=1e-6)
        np.testing.assert_allclose(take["head"], anim.head_rotation, atol=1e-6)
        np.testing.assert_allclose(take["eyes"], anim.gaze, atol=1e-6)


def test_a_live_link_face_recording_turns_the_eyes_where_its_curves_look(tmp_path):
    # One frame as the Live Link Face app records it (values from a public recording): both eyes look
    # toward the face's left and up (EyeLookOutLeft, EyeLookInRight, EyeLookUp*), with negative eye yaw and pitch.
    curves = {"EyeLookOutLeft": 0.93, "EyeLookUpLeft": 0.65, "EyeLookInRight": 1.0, "EyeLookUpRight": 0.64}
    angles = {"LeftEyeYaw": -0.585, "LeftEyePitch": -0.335, "LeftEyeRoll": 0.19, "RightEyeYaw": -0.544,
              "RightEyePitch": -0.335, "RightEyeRoll": 0.18, "HeadYaw": 0.0, "HeadPitch": 0.0, "HeadRoll": 0.0}
    header = ["Timecode", "BlendShapeCount", *curves, *angles]
    row = ["12:24:28:45.923", "61", *map(str, curves.values()), *map(str, angles.values())]
    path = tmp_path / "llf.csv"
    path.write_text(",".join(header) + "\n" + ",".join(row) + "\n")
    yaw, pitch = blender.read_take(str(path))["eyes"][0]
    assert yaw == pytest.approx(0.585) and pitch == pytest.approx(0.335)  # blendtalk: + toward the face's left, + up


def test_the_live_pages_saved_take_of_2026_12_06_reads_too(tmp_path):
    # live.js's first saveTake(): the rig's names, then HeadPitch, HeadYaw, HeadRoll, EyeYaw, EyePitch (blendtalk's signs)
    header = ["Timecode", "BlendShapeCount", "jawOpen", "eyeBlinkLeft", "HeadPitch", "HeadYaw", "HeadRoll", "EyeYaw", "EyePitch"]
    rows = [["00:00:00:00.000", "2", "0.5", "0.0", "0.1", "0.2", "0.3", "0.04", "0.05"],
            ["00:00:00:01.000", "2", "0.25", "1.0", "0", "0", "0", "0", "0"]]
    path = tmp_path / "blendtalk-live-take.csv"
    path.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    take = blender.read_take(str(path))
    assert take["names"] == ["jawOpen", "eyeBlinkLeft"] and take["frames"] == [[0.5, 0.0], [0.25, 1.0]]
    assert take["head"][0] == [0.1, 0.2, 0.3] and take["eyes"][0] == [0.04, 0.05] and take["fps"] == 30


def test_the_speech_beside_a_take_is_found(tmp_path):
    take = tmp_path / "blendtalk_sad_arkit.csv"
    assert blender.speech_beside(str(take)) is None
    (tmp_path / "blendtalk_sad.mp4").write_bytes(b"")
    assert blender.speech_beside(str(take)) == str(tmp_path / "blendtalk_sad.mp4")
    (tmp_path / "blendtalk_sad.wav").write_bytes(b"")  # a wav is preferred: no video to decode
    assert blender.speech_beside(str(take)) == str(tmp_path / "blendtalk_sad.wav")


def test_bad_takes_get_one_clear_line(tmp_path):
    cases = {"a.txt": "x", "b.json": "{not json", "c.json": json.dumps({"fps": 30}),
             "d.csv": "time,count\n", "e.csv": "Timecode,BlendShapeCount,JawOpen\n00:00:00:00.000,1,zero\n",
             "f.json": json.dumps({"fps": 30, "names": ["jawOpen"], "frames": [[0.1, 0.2]]})}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError) as err:
            blender.read_take(str(tmp_path / name))
        assert name in str(err.value) and "\n" not in str(err.value)


def test_the_addon_needs_only_the_standard_library_and_blender():
    import ast

    tree = ast.parse(open(blender.__file__).read())
    names = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert names - set(sys.stdlib_module_names) == {"bpy", "bpy_extras", "mathutils"}


def test_rotations_are_blendtalks_in_blenders_axes():
    rng = np.random.default_rng(2)
    for pitch, yaw, roll in rng.uniform(-0.5, 0.5, (10, 3)):
        expected = rotation_matrix(np.array([pitch, yaw, roll]))
        np.testing.assert_allclose(blender.head_matrix(pitch, yaw, roll), expected, atol=1e-12)
        eye = gaze_rotation(torch.tensor([[yaw, pitch]], dtype=torch.float64))[0].numpy()
        np.testing.assert_allclose(blender.eye_matrix(yaw, pitch), eye, atol=1e-12)
        m = np.array(blender.to_blender(blender.head_matrix(pitch, yaw, roll)))
        w, x, y, z = blender.head_quaternion([pitch, yaw, roll])
        q = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                      [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                      [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
        np.testing.assert_allclose(q, m, atol=1e-12)
    # A nod down (+ pitch) takes Blender's forward (-y, out of the face) downward (-z); a turn toward
    # the face's left (+ yaw) takes it toward +x.
    nod = np.array(blender.to_blender(blender.head_matrix(0.3, 0, 0))) @ [0, -1, 0]
    turn = np.array(blender.to_blender(blender.head_matrix(0, 0.3, 0))) @ [0, -1, 0]
    assert nod[2] < -0.2 and turn[0] > 0.2


def test_head_and_eye_bones_are_found_by_name():
    heads = ["Head", "head", "mixamorig:Head", "DEF-head", "CC_Base_Head"]
    assert all(blender.is_head_bone(n) for n in heads)
    assert not any(blender.is_head_bone(n) for n in ["HeadTop_End", "Neck", "forehead", "head_ctrl"])
    sides = {"LeftEye": "left", "eye.L": "left", "mixamorig:LeftEye": "left", "left_eye": "left", "CC_Base_L_Eye": "left",
             "RightEye": "right", "DEF-eye.R": "right", "CC_Base_R_Eye": "right", "right_eye": "right"}
    assert {n: blender.eye_side(n) for n in sides} == sides
    assert [blender.eye_side(n) for n in ("Eyes", "eyelid.L", "EyeTarget", "brow.L", "eyeLash_L", "Head")] == [None] * 6


def _wait(condition, seconds: float = 10.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_stream_client_reads_the_live_format():
    port = free_port()
    server = WebSocketBroadcast("127.0.0.1", port, "tok").start()
    server.hello = encode({"type": "hello", "format": "blendtalk-live", "version": 1, "fps": 30})
    client = blender.StreamClient(f"ws://127.0.0.1:{port}/?token=tok", record=True).start()
    try:
        assert _wait(lambda: client.hello is not None)
        big = {"type": "frame", "version": 1, "frame": 0, "t": 0.0, "arkit": {n: 0.5 for n in ARKIT},
               "head": [0.1, 0.0, 0.0], "eyes": [0.0, 0.1], "pad": "x" * 70_000}  # a 64-bit length field
        server.send(encode(big))
        for i in range(1, 5):
            server.send(encode({"type": "frame", "version": 1, "frame": i, "t": i / 30, "arkit": {"jawOpen": i / 10},
                                "head": [0, 0, 0], "eyes": [0, 0]}))
        server.send(encode({"type": "notice", "version": 1, "t": 0.2, "text": "no sound for 5 s"}))
        server.send(encode({"type": "end", "version": 1, "frames": 5}))
        assert _wait(lambda: client.ended)
        assert [m["frame"] for m in client.take_recorded()] == [0, 1, 2, 3, 4]
        assert client.latest()["arkit"] == {"jawOpen": 0.4} and client.latest() is None  # handed over once
        assert client.notices == ["no sound for 5 s"] and client.error is None
    finally:
        client.close()
        server.close()


def test_stream_client_says_why_it_cannot_connect():
    port = free_port()
    with pytest.raises(blender.StreamError, match="cannot reach"):
        blender.StreamClient(f"ws://127.0.0.1:{port}/?token=x").start()
    for url in ("http://127.0.0.1:1/", "ws://:80/", "ws://host:port/"):
        with pytest.raises(blender.StreamError):
            blender.StreamClient(url)
    server = WebSocketBroadcast("127.0.0.1", port, "tok").start()
    try:
        client = blender.StreamClient(f"ws://127.0.0.1:{port}/?token=wrong").start()
        assert _wait(lambda: not client.running)
        assert "4401" in client.error and "token" in client.error
    finally:
        server.close()


BPY_PYTHON = os.environ.get("BLENDTALK_BPY_PYTHON")
_IN_BLENDER = r"""
import importlib.util, json, sys, time
import bpy
spec = importlib.util.spec_from_file_location("blendtalk_blender", sys.argv[1])
addon = importlib.util.module_from_spec(spec)
spec.loader.exec_module(addon)
bpy.ops.wm.read_factory_settings(use_empty=True)
addon.register()
bpy.ops.import_scene.gltf(filepath=sys.argv[2])
for obj in bpy.data.objects:
    obj.select_set(obj.type == "MESH")
out = {"ops": [bpy.ops.blendtalk.import_take.idname(), bpy.ops.blendtalk.live_connect.idname()]}
bpy.context.scene.frame_set(10)
out["import"] = addon.import_take(bpy.context, sys.argv[3])
editor = bpy.context.scene.sequence_editor
strips = editor.strips if hasattr(editor, "strips") else editor.sequences
out["sound"] = [[s.type, s.frame_start] for s in strips]
take = addon.read_take(sys.argv[3])
face, head, eye = (bpy.data.objects[n] for n in ("face", "head", "left_eye"))
jaw = take["names"].index("jawOpen")
out["posed"] = []
for t in (0, 7, 19):
    bpy.context.scene.frame_set(10 + t)
    out["posed"].append([face.data.shape_keys.key_blocks["jawOpen"].value, take["frames"][t][jaw],
                         list(head.rotation_quaternion), addon.head_quaternion(take["head"][t]),
                         list(eye.rotation_quaternion), addon.eye_quaternion(take["eyes"][t])])
out["fps"] = bpy.context.scene.render.fps
# A character: a mesh with ARKit shape keys deformed by an armature whose head and eye bones point
# their own ways (the head bone up with a roll, the eyes forward), the eyes children of the head.
for obj in bpy.data.objects:
    obj.select_set(False)
arm_data = bpy.data.armatures.new("Rig")
arm = bpy.data.objects.new("Rig", arm_data)
bpy.context.scene.collection.objects.link(arm)
bpy.context.view_layer.objects.active = arm
bpy.ops.object.mode_set(mode="EDIT")
head_bone = arm_data.edit_bones.new("Head")
head_bone.head, head_bone.tail, head_bone.roll = (0, 0, 1.5), (0, 0, 1.7), 0.4
for name, x in (("LeftEye", 0.03), ("RightEye", -0.03)):
    eye_bone = arm_data.edit_bones.new(name)
    eye_bone.head, eye_bone.tail, eye_bone.parent = (x, -0.1, 1.6), (x, -0.12, 1.6), head_bone
bpy.ops.object.mode_set(mode="OBJECT")
mesh = bpy.data.meshes.new("Avatar")
mesh.from_pydata([(0, -0.1, 1.5), (0.1, -0.1, 1.5), (0, -0.1, 1.6)], [], [(0, 1, 2)])
avatar = bpy.data.objects.new("Avatar", mesh)
bpy.context.scene.collection.objects.link(avatar)
avatar.shape_key_add(name="Basis")
avatar.shape_key_add(name="JawOpen")
avatar.parent = arm
avatar.modifiers.new("Armature", "ARMATURE").object = arm
avatar.select_set(True)
bpy.context.view_layer.objects.active = avatar
bpy.context.scene.frame_set(1)
out["character"] = addon.import_take(bpy.context, sys.argv[3])
bones = arm.pose.bones
out["bones"] = []
for t in (3, 11):
    bpy.context.scene.frame_set(1 + t)
    bpy.context.view_layer.update()
    def armature_rotation(name):  # the posed bone's turn from its rest, in the armature's axes
        pose_bone = bones[name]
        return [list(row) for row in (pose_bone.matrix.to_3x3() @ pose_bone.bone.matrix_local.to_3x3().inverted())]
    out["bones"].append([armature_rotation("Head"), addon.to_blender(addon.head_matrix(*take["head"][t])),
                         armature_rotation("LeftEye"),
                         addon._matmul(addon.to_blender(addon.head_matrix(*take["head"][t])),
                                       addon.to_blender(addon.eye_matrix(*take["eyes"][t]))),
                         avatar.data.shape_keys.key_blocks["JawOpen"].value, take["frames"][t][jaw]])
for obj in bpy.data.objects:
    obj.select_set(obj.name in ("face", "left_eye", "right_eye"))
bpy.context.scene.frame_set(100)
settings = bpy.context.scene.blendtalk
settings.url, settings.record = sys.argv[4], True
out["connect"] = list(bpy.ops.blendtalk.live_connect())  # the panel's button; Blender's timer runs _poll_live
print("CONNECTED", flush=True)
link = addon._LIVE["link"]
values, end = set(), time.time() + 30
while addon._poll_live() is not None and time.time() < end:  # no event loop in background mode: call the timer
    values.add(round(face.data.shape_keys.key_blocks["jawOpen"].value, 4))
    time.sleep(1 / 60)
out["live"] = {"status": addon._LIVE["status"], "frames": link.client.frames, "values": len(values),
               "error": link.client.error, "closed": "link" not in addon._LIVE}
bpy.context.scene.frame_set(104)
out["live"]["recorded_jaw"] = face.data.shape_keys.key_blocks["jawOpen"].value
addon.unregister()
print("RESULT " + json.dumps(out))
"""


@pytest.mark.skipif(not BPY_PYTHON, reason="BLENDTALK_BPY_PYTHON (a Python with the bpy wheel) is not set")
def test_the_addon_in_blender(tmp_path):
    anim = _take(30)
    take = write_arkit_json(anim, tmp_path / "take_arkit.json")
    shutil.copyfile(ASSETS_DIR / "audio" / "arctic_a0009.wav", tmp_path / "take.wav")  # the take's speech, as the app names it
    port = free_port()
    server = WebSocketBroadcast("127.0.0.1", port, "tok").start()
    server.hello = encode({"type": "hello", "format": "blendtalk-live", "version": 1, "fps": 30})
    script = tmp_path / "in_blender.py"
    script.write_text(_IN_BLENDER)
    proc = subprocess.Popen([BPY_PYTHON, str(script), blender.__file__, str(ASSETS_DIR / "live" / "face_arkit.glb"), str(take),
                             f"ws://127.0.0.1:{port}/?token=tok"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:  # stream frames once Blender is connected
            lines.append(line)
            if line.startswith("CONNECTED"):
                for i in range(30):
                    server.send(encode({"type": "frame", "version": 1, "frame": i, "t": i / 30,
                                        "arkit": {"jawOpen": i / 30}, "head": [0.01 * i, 0, 0], "eyes": [0, 0]}))
                    time.sleep(1 / 30)
                server.send(encode({"type": "end", "version": 1, "frames": 30}))
        proc.wait(120)
    finally:
        server.close()
        if proc.poll() is None:
            proc.kill()
    result = [line for line in lines if line.startswith("RESULT ")]
    assert result, "".join(lines[-30:])
    out = json.loads(result[0][len("RESULT "):])
    assert out["import"] == {"frames": 30, "curves": 52, "missing": [], "rig": "head: head; eyes: left_eye, right_eye",
                             "speech": "take.wav"}
    assert out["sound"] == [["SOUND", 10]]  # from the frame the take starts at
    assert out["fps"] == 30
    for jaw, expected_jaw, head, expected_head, eye, expected_eye in out["posed"]:
        assert jaw == pytest.approx(expected_jaw, abs=1e-5)
        assert head == pytest.approx(expected_head, abs=1e-5) and eye == pytest.approx(expected_eye, abs=1e-5)
    character = out["character"]
    assert character["curves"] == 1 and len(character["missing"]) == 51 and character["rig"] == "head: Head; eyes: LeftEye, RightEye"
    for head, expected_head, eye, expected_eye, jaw, expected_jaw in out["bones"]:
        np.testing.assert_allclose(head, expected_head, atol=1e-5)
        np.testing.assert_allclose(eye, expected_eye, atol=1e-5)  # the eyes turn in the turned head
        assert jaw == pytest.approx(expected_jaw, abs=1e-5)
    live = out["live"]
    assert out["connect"] == ["FINISHED"] and live["closed"], live
    assert live["frames"] == 30 and live["error"] is None and "ended after 30 frames" in live["status"] and live["values"] > 5
    assert live["recorded_jaw"] == pytest.approx(4 / 30, abs=1e-4)  # frame 4 keyframed at 100 + 4
