import base64
import json
import re

import numpy as np
import pytest
import torch

from blendtalk.animation import Animation
from blendtalk.constants import SAMPLE_RATE
from blendtalk.render.viz import (
    COORD_QUANTUM,
    MAX_FRAMES,
    _compact_frames,
    animation_figure,
    figure_html,
    frame_indices,
    mesh_figure,
    rig_look,
    weights_figure,
)

PAYLOAD_LIMIT = 10_000_000  # characters of JSON for the rig at MAX_FRAMES frames
FPS = 30


@pytest.fixture(scope="module")
def talking(rig):
    """(300, V, 3): 10 s of the jaw opening and closing, smiling halfway through."""
    t = np.arange(300)
    w = np.zeros((300, 52), np.float32)
    w[:, rig.index("jawOpen")] = 0.5 - 0.5 * np.cos(t / 4)
    w[150:, rig.index("mouthSmileLeft")] = w[150:, rig.index("mouthSmileRight")] = 0.8
    return rig(w).astype(np.float32)


@pytest.fixture(scope="module")
def rig_figure(rig, talking):
    return animation_figure(talking, rig.triangles, fps=FPS, rig=rig)


@pytest.fixture(scope="module")
def rig_json(rig_figure):
    return rig_figure.to_json()


def test_payload_bound_for_rig_at_max_frames(rig_figure, rig_json):
    assert len(rig_figure.frames) == MAX_FRAMES
    assert len(rig_json) <= PAYLOAD_LIMIT, f"{len(rig_json) / 1e6:.2f} MB"


def test_frames_carry_only_vertex_positions(rig_json, rig):
    fig = json.loads(rig_json)
    for frame in fig["frames"]:
        assert frame["traces"] == [0]
        assert len(frame["data"]) == 1
        assert set(frame["data"][0]) <= {"x", "y", "z", "type"}
    base = fig["data"][0]
    assert {"i", "j", "k", "x", "y", "z"} <= set(base)
    assert not any(k in json.dumps(fig["frames"]) for k in ('"i"', '"j"', '"k"', "intensity", "lighting"))


def test_triangles_sent_once_and_correct(rig_figure, rig):
    face = rig_figure.data[0]
    tri = np.stack([np.asarray(face.i), np.asarray(face.j), np.asarray(face.k)], -1)
    f, v = len(rig.triangles), rig.num_vertices
    assert np.array_equal(tri[:f], rig.triangles)
    # The neck follows in the same trace: new vertices after the face's, its top ring the face's own.
    neck = tri[f:]
    assert len(neck) > 100 and neck.max() == len(face.x) - 1 > v
    assert (neck < v).any() and (neck >= v).any()


def test_coordinates_keep_the_motion_to_the_quantum(rig_figure, talking):
    """Frame-to-frame differences in scene units are the metre differences / 0.01 mm, +-1 unit."""
    picks = frame_indices(len(talking), MAX_FRAMES)
    first = np.stack([np.asarray(rig_figure.frames[0].data[0][c]) for c in "xyz"], -1).astype(np.float64)
    for k in (37, len(picks) - 1):
        frame = np.stack([np.asarray(rig_figure.frames[k].data[0][c]) for c in "xyz"], -1).astype(np.float64)
        expected = (talking[picks[k]] - talking[0]).astype(np.float64) / COORD_QUANTUM
        assert np.abs(frame[: talking.shape[1]] - first[: talking.shape[1]] - expected).max() <= 1.01
    assert np.abs(first - np.stack([np.asarray(rig_figure.data[0][c]) for c in "xyz"], -1)).max() == 0


def test_frames_cover_the_whole_clip_at_real_speed(rig_figure, talking):
    layout = rig_figure.layout
    steps = layout.sliders[0].steps
    times = [float(s.label) for s in steps]
    assert times[0] == 0 and times[-1] == pytest.approx((len(talking) - 1) / FPS, abs=0.005)
    assert all(b > a for a, b in zip(times, times[1:]))
    play = layout.updatemenus[0].buttons[0].args[1]
    # (frames - 1) * frame duration = the time from the first to the last frame.
    assert (len(steps) - 1) * play["frame"]["duration"] == pytest.approx(1000 * (len(talking) - 1) / FPS)
    assert play["frame"]["redraw"] is True  # mesh3d is not animatable: each frame must redraw


def test_slider_steps_match_frames(rig_figure):
    steps = rig_figure.layout.sliders[0].steps
    assert len(steps) == len(rig_figure.frames)
    assert [list(s.args[0]) for s in steps] == [[f.name] for f in rig_figure.frames]
    assert len({f.name for f in rig_figure.frames}) == len(rig_figure.frames)


@pytest.mark.parametrize("num_frames, max_frames", [(1, 150), (7, 150), (150, 150), (151, 150), (1000, 40), (9, 2)])
def test_frame_indices(num_frames, max_frames):
    idx = frame_indices(num_frames, max_frames)
    assert len(idx) == min(num_frames, max_frames)
    assert idx[0] == 0 and idx[-1] == num_frames - 1
    assert np.all(np.diff(idx) >= 1)


def test_short_clip_keeps_every_frame_and_accepts_an_animation(rig):
    verts = np.repeat(rig.vertices[None], 12, 0).astype(np.float32)
    anim = Animation(verts, rig.triangles, audio=np.zeros(SAMPLE_RATE * 12 // FPS, np.float32))
    fig = animation_figure(anim, max_frames=50)
    assert len(fig.frames) == 12
    assert fig.layout.sliders[0].steps[-1].label == f"{11 / FPS:.2f}"


def test_torch_input(rig, talking):
    fig = animation_figure(torch.as_tensor(talking[:20]), torch.as_tensor(rig.triangles), max_frames=5)
    assert len(fig.frames) == 5


def test_look_of_the_scene(rig_figure, rig):
    scene = rig_figure.layout.scene
    eye = scene.camera.eye
    assert eye.z > 1 and abs(eye.x) < 1e-9 and abs(eye.y) < 0.3 * eye.z  # from the front, along +z
    assert (scene.camera.up.x, scene.camera.up.y, scene.camera.up.z) == (0, 1, 0)
    assert scene.aspectmode == "data"
    assert not any(ax.visible for ax in (scene.xaxis, scene.yaxis, scene.zaxis))
    assert rig_figure.layout.paper_bgcolor == "rgb(43,46,54)"  # RenderConfig.background
    face = rig_figure.data[0]
    assert face.flatshading is False and face.lightposition.z > 0
    # Intensity: 1 on the lips, 0.5 plain skin, toward 0 on the painted brows.
    tint = np.asarray(face.intensity)
    assert len(tint) == len(face.x)
    tint, neck = tint[: rig.num_vertices], tint[rig.num_vertices :]
    lips, brow = rig.mask("lips"), rig.dressing["face_brow"] > 0
    assert tint[lips].max() > 0.9 and np.all(tint[~rig.mask("mouth") & ~brow] == 0.5) and np.all(neck == 0.5)
    assert tint[rig.dressing["face_brow"] > 0.8].max() < 0.2
    assert len(rig_figure.data) == 2 and rig_figure.data[1].name == "eyes"  # static eyeballs, not animated


def test_mesh_figure(rig):
    pose = rig(rig.weights({"jawOpen": 1.0}))
    look = rig_look(rig)  # dressed once, as the app's explorer would
    fig = mesh_figure(pose, rig.triangles, rig=look, title="jawOpen")
    assert fig.to_json() == mesh_figure(pose, rig.triangles, rig=rig, title="jawOpen").to_json()
    assert fig.frames == ()
    assert len(fig.data) == 2 and fig.layout.title.text == "jawOpen"
    # The same framing for every pose of the rig: the ranges come from the template.
    neutral = mesh_figure(rig.vertices, rig.triangles, rig=look)
    assert neutral.layout.scene.yaxis.range == fig.layout.scene.yaxis.range
    plain = mesh_figure(pose, rig.triangles)
    assert len(plain.data) == 1 and plain.data[0].color is not None and plain.data[0].intensity is None


def test_neck_in_the_face_trace_moves_as_the_dressing_moves_it(rig):
    from blendtalk.face.dressing import FaceDressing

    look = rig_look(rig)
    dressing = FaceDressing.for_rig(rig)
    poses = rig(np.stack([rig.weights({"jawOpen": 1.0}), rig.weights({})])) + np.float32([0, -0.004, 0.002])
    with_neck = look.neck.attach(poses, look.template)  # (2, V + N, 3)
    a, b = dressing.ranges["neck"]
    dressed = dressing(poses)[:, a:b]
    # The look's neck is the dressing's without the copies of the face's boundary, in the same order.
    copies = ~np.isin(np.arange(a, b), dressing.triangles)
    np.testing.assert_allclose(with_neck[:, rig.num_vertices :], dressed[:, ~copies], atol=1e-6)
    assert np.abs(with_neck[0, rig.num_vertices :] - look.neck.rest).max() > 0.003  # it follows the shifted face
    fig = mesh_figure(poses[0], rig.triangles, rig=look)
    assert len(fig.data[0].x) == rig.num_vertices + len(look.neck.rest)
    bare = mesh_figure(poses[0], rig.triangles)  # not the rig's look: the face alone
    assert len(bare.data[0].x) == rig.num_vertices


def _animation(rig, speech=True, expression=True, arkit=True, frames=60):
    rng = np.random.default_rng(0)
    arkit_w = np.zeros((frames, 52), np.float32)
    strong = [rig.index(n) for n in ("jawOpen", "mouthSmileLeft", "browInnerUp")]
    arkit_w[:, strong] = [0.9, 0.7, 0.5]
    arkit_w[:, :20] += rng.uniform(0, 0.05, (frames, 20))
    return Animation(
        np.repeat(rig.vertices[None], frames, 0), rig.triangles, audio=np.zeros(SAMPLE_RATE * frames // FPS),
        speech_weights=rng.normal(size=(frames, 4)) if speech else None,
        expression_weights=rng.normal(size=(frames, 3)) if expression else None,
        arkit_weights=arkit_w if arkit else None,
        arkit_names=rig.blendshape_names if arkit else (),
    )


def test_weights_figure_traces(rig):
    anim = _animation(rig)
    fig = weights_figure(anim)
    groups = [t.legendgroup for t in fig.data]
    assert groups == ["speech"] * 4 + ["expression"] * 3 + ["ARKit"] * 10
    arkit = [t.name for t in fig.data if t.legendgroup == "ARKit"]
    assert arkit[:3] == ["jawOpen", "mouthSmileLeft", "browInnerUp"]  # most active first
    assert fig.data[0].xaxis == "x" and fig.data[-1].xaxis == "x3"  # three stacked panels
    x = np.asarray(fig.data[0].x)
    assert x[0] == 0 and x[-1] == pytest.approx(59 / FPS)  # seconds
    assert np.allclose(np.asarray(fig.data[5].y), anim.expression_weights[:, 1])


def test_weights_figure_missing_weights(rig):
    fig = weights_figure(_animation(rig, expression=False, arkit=False))
    assert [t.legendgroup for t in fig.data] == ["speech"] * 4
    assert "expression" in fig.layout.title.text and "ARKit" in fig.layout.title.text
    empty = weights_figure(_animation(rig, speech=False, expression=False, arkit=False))
    assert len(empty.data) == 0 and "No blendshape weights" in empty.layout.annotations[0].text


def test_figure_html_keeps_the_frames(rig, talking):
    fig = animation_figure(talking[:10], rig.triangles, max_frames=4)
    page = figure_html(fig)
    assert page.startswith("<iframe srcdoc=") and "addFrames" in page and "&quot;traces&quot;" in page


@pytest.mark.parametrize("make, message", [
    (lambda r, v: animation_figure(v[:, :, :2], r.triangles), r"\(T, V, 3\)"),
    (lambda r, v: animation_figure(v[0], r.triangles), r"\(T, V, 3\)"),
    (lambda r, v: animation_figure(v[:0], r.triangles), "T > 0"),
    (lambda r, v: animation_figure(v), "triangles"),
    (lambda r, v: animation_figure(v, r.triangles[:, :2]), r"\(F, 3\)"),
    (lambda r, v: animation_figure(v, r.triangles + 1), "indices must lie in"),
    (lambda r, v: animation_figure(v, r.triangles, max_frames=0), "max_frames"),
    (lambda r, v: animation_figure(v, r.triangles, fps=0), "fps"),
    (lambda r, v: animation_figure(np.full_like(v, np.nan), r.triangles), "finite"),
    (lambda r, v: animation_figure(v[:, :100], r.triangles[:10] % 100, rig=r), "rig has"),
    (lambda r, v: mesh_figure(v, r.triangles), r"\(V, 3\)"),
    (lambda r, v: mesh_figure(v[0], r.triangles, rig=r.vertices), "rig must be"),
    (lambda r, v: mesh_figure(v[0], r.triangles, reference=np.zeros((4, 2))), "reference"),
])
def test_bad_input(rig, talking, make, message):
    with pytest.raises(ValueError, match=message):
        make(rig, talking[:3])


def test_animation_with_explicit_triangles_is_refused(rig):
    with pytest.raises(ValueError, match="only with a vertex array"):
        animation_figure(_animation(rig, frames=3), rig.triangles)
    with pytest.raises(ValueError, match="expects an Animation"):
        weights_figure(np.zeros((3, 4)))


def test_figure_html_sends_moving_vertices_once_per_frame(rig, talking):
    """The page carries only the moving vertices as int8 steps, and they rebuild every frame to within half a step."""
    fig = animation_figure(talking, rig.triangles, max_frames=30, rig=rig)
    plain = len(fig.to_html(include_plotlyjs=False, full_html=True))
    assert len(figure_html(fig, include_plotlyjs=False)) < plain / 2
    bare, script = _compact_frames(fig)
    assert not bare.frames and "addFrames" in script
    idx = np.frombuffer(base64.b64decode(re.search(r"Uint32Array\(raw\('([^']*)'", script).group(1)), "<u4")
    q = np.frombuffer(base64.b64decode(re.search(r"Int8Array\(raw\('([^']*)'", script).group(1)), np.int8)
    step = int(re.search(r"step = (\d+)", script).group(1))
    base = np.stack([np.asarray(getattr(fig.data[0], c), dtype=np.float64) for c in "xyz"], -1)  # (V, 3)
    shown = np.stack([np.stack([np.asarray(getattr(f.data[0], c)) for c in "xyz"], -1) for f in fig.frames])  # (n, V, 3)
    rebuilt = np.repeat(base[None], len(shown), 0)
    rebuilt[:, idx] += q.reshape(len(shown), len(idx), 3).astype(np.float64) * step
    assert 0 < len(idx) < base.shape[0] and np.abs(rebuilt - shown).max() <= step / 2
