"""Pipeline end to end on the shipped ARCTIC clip and DFM (issue 6): expression inputs, fusion, validation.

The models and the clip's speech displacement are built once per module (the DFM's speech encoder
is the slow part on CPU); tests that only need the fusion's behaviour use a 1 s cut of the clip.
"""

import numpy as np
import pytest
import torch

from blendtalk.animation import Animation
from blendtalk.speech.audio import AudioError, load_audio, num_frames
from blendtalk.constants import ASSETS_DIR, FPS
from blendtalk.expression.emotions import EMOTIONS, emotion_weights
from blendtalk.speech.phones import read_phone_labels
from blendtalk.evaluation.fusion import fuse_keeping_residuals
from blendtalk.pipeline import Pipeline, expression_weights, load_reference
from blendtalk.request import METHODS, Expression
from blendtalk.speech.features import features_from_phones

WAV = ASSETS_DIR / "audio" / "arctic_a0009.wav"
TRANSCRIPT = (ASSETS_DIR / "audio" / "arctic_a0009.txt").read_text().strip()
PHONES = ASSETS_DIR / "audio" / "arctic_a0009.phones.txt"
CHANGE_S = 1.5  # the timeline switches neutral -> surprised here
SETTLED_S = 2.0  # the 0.4 s transition is over by then
SHORT = 30  # frames (1 s) for tests of the fusion's behaviour, not of timing


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    # The procedural speech driver: these tests are about fusion and expression, not the learned speech model.
    return Pipeline.from_pretrained(speech="visemes", device="cpu")


@pytest.fixture(scope="module")
def speech(pipe):
    """The ARCTIC clip's SpeechFeatures (labelled phones: no aligner needed) and speech displacement d_s (T, V, 3)."""
    features = features_from_phones(load_audio(WAV), read_phone_labels(PHONES), "aligned")
    d_s, driver = pipe.speech_deformation(features)
    return features, d_s, driver


def upper_face(pipe, d: np.ndarray) -> np.ndarray:
    """Mean per-vertex displacement norm (T,) over the rig's upper face, metres."""
    return np.linalg.norm(d[:, pipe.rig.mask("upper_face")], axis=-1).mean(axis=1)


def test_loads_shipped_checkpoints(speech):
    pipe = Pipeline.from_pretrained(device="cpu")
    features, _, _ = speech
    assert pipe.dfm is not None and pipe.arkit is not None and pipe.speech_model is not None
    assert any("dfm" in line and "shipped" in line for line in pipe.sources)
    assert any("speech" in line and "shipped" in line for line in pipe.sources)
    d_s, driver = pipe.speech_deformation(features)
    assert driver == "faceformer"
    assert features.num_frames == num_frames(len(features.audio)) == 93
    assert d_s.shape == (93, pipe.rig.num_vertices, 3) and np.isfinite(d_s).all()
    assert np.ptp(pipe.rig.lip_gap(pipe.rig.vertices[None] + d_s)) > 2e-3  # the mouth opens and closes: > 2 mm


@pytest.mark.parametrize("method", ["ours", "eq13"])
def test_fuse_encodes_repeated_expression_frames_once_and_exactly(pipe, speech, method):
    """Each distinct expression frame is encoded once; the result is the DFM's own fusion of every frame:
    fuse_keeping_residuals for "ours", eq. 13 (fuse_weights of the own halves) for "eq13"."""
    _, d_s, _ = speech
    d_s = d_s[:SHORT]
    held = pipe.expression_deformation(Expression("happy", 0.8, blinks=False), SHORT)
    d_e = np.concatenate([held[:10], held[:1] * 0.5, held[10:20], held[:1] * 0.5, held[20:28]])  # repeats far apart, not only in runs
    assert len(np.unique(d_e.reshape(SHORT, -1), axis=0)) < SHORT
    fused, weights = pipe.fuse(d_s, d_e, method)
    with torch.no_grad():  # the reference: every frame through the expression encoder
        ds, de = torch.from_numpy(d_s), torch.from_numpy(d_e)
        w_s, _ = pipe.dfm.split(pipe.dfm.encode_speech(ds))
        _, w_e = pipe.dfm.split(pipe.dfm.encode_expression(de))
        expected = (pipe.dfm.fuse_weights(w_s, w_e) if method == "eq13" else fuse_keeping_residuals(pipe.dfm, ds, de)).numpy()
    np.testing.assert_allclose(weights["expression_weights"], w_e.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(fused, expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("method", ["interpolation", "ours", "eq13"])
def test_timeline_changes_the_upper_face_after_its_key(pipe, speech, method):
    features, d_s, _ = speech
    frames = len(d_s)
    expr = Expression(timeline=f"neutral@0 surprised@{CHANGE_S}", blinks=False)
    d_e = pipe.expression_deformation(expr, frames)
    fused, weights = pipe.fuse(d_s, d_e, method)
    fused = fused - pipe.rig.displacement(pipe.closure_release(expr, d_s))  # as animate does
    assert fused.shape == d_s.shape and np.isfinite(fused).all()
    t = np.arange(frames) / FPS
    upper = upper_face(pipe, fused)
    before, after = upper[t < CHANGE_S], upper[t >= SETTLED_S]
    assert before.max() < 0.3e-3  # speech barely reaches the brows: < 0.3 mm
    assert after.min() > 0.6e-3  # surprise raises them: > 0.6 mm on average over the upper face
    assert after.mean() > 4 * before.mean()
    # The mouth still follows the speech under the expression (surprise drops the jaw further, and
    # gives it back at the speech's closures: the lips close wherever the speech's do).
    gap_speech = pipe.rig.lip_gap(pipe.rig.vertices[None] + d_s)
    gap_fused = pipe.rig.lip_gap(pipe.rig.vertices[None] + fused)
    for span in (t < CHANGE_S, t >= SETTLED_S):
        assert np.corrcoef(gap_speech[span], gap_fused[span])[0, 1] > 0.8
    closed = gap_speech < 0.2e-3
    # eq. 13 redraws the speech through the 16 speech blendshapes, whose error at the lips (about a
    # millimetre) leaves a little gap where the speech closes; the app's fusion keeps the input's lips.
    assert closed[t >= SETTLED_S].any() and gap_fused[closed].max() < (1.5e-3 if method == "eq13" else 1e-3)
    if method != "interpolation":
        assert weights["speech_weights"].shape[0] == weights["expression_weights"].shape[0] == frames
        assert weights["arkit_weights"].shape == (frames, 52)
    else:
        np.testing.assert_allclose(fused, d_s + d_e - pipe.rig.displacement(pipe.closure_release(expr, d_s)), atol=1e-7)


def test_intensity_zero_is_nearly_speech_only(pipe, speech):
    d_s = speech[1][:SHORT]
    silent_expr = pipe.expression_deformation(Expression("happy", intensity=0.0, blinks=False), SHORT)
    assert not silent_expr.any()
    full_expr = pipe.expression_deformation(Expression("happy", intensity=1.0, blinks=False), SHORT)
    np.testing.assert_array_equal(pipe.fuse(d_s, silent_expr, "interpolation")[0], d_s)
    np.testing.assert_array_equal(pipe.fuse(d_s, full_expr, "speech_only")[0], d_s)
    zero, _ = pipe.fuse(d_s, silent_expr, "ours")
    happy, _ = pipe.fuse(d_s, full_expr, "ours")
    # The DFM takes the expression-like leak its encoder finds out of d_s: close to it, not exact.
    off = np.sqrt(np.mean((zero - d_s) ** 2))
    assert off < 0.1 * np.sqrt(np.mean(d_s**2))
    assert np.sqrt(np.mean((happy - d_s) ** 2)) > 3 * off


def test_an_emotion_label_is_kept_whole_and_a_recording_keeps_its_expression(pipe, speech):
    """A label's expression is made of action units, none of it articulation: "ours" adds all of it.
    A recorded expression goes through the expression encoder, which must keep the expression itself
    (issue #23: 0.9-1.1 of it) and take out part of any speech riding on its mouth."""
    d_s = speech[1][:SHORT]
    leak = speech[1][2 * SHORT:3 * SHORT]  # other words, as a recording made while talking carries them
    d_e = pipe.expression_deformation(Expression("angry", blinks=False), SHORT)  # open-mouthed: on the speech bases too
    base, _ = pipe.fuse(d_s, np.zeros_like(d_e), "ours", clean_expression=True)
    label, _ = pipe.fuse(d_s, d_e, "ours", clean_expression=True)
    recorded, _ = pipe.fuse(d_s, d_e, "ours")
    talking, _ = pipe.fuse(d_s, d_e + leak, "ours")
    np.testing.assert_allclose(label - base, d_e, atol=1e-6)
    taken = np.abs((recorded - base) - d_e).mean() / np.abs(d_e).mean()
    assert taken < 0.1
    leak_kept = np.abs(talking - recorded).mean() / np.abs(leak).mean()
    assert leak_kept < 0.9


def test_mix_is_between_its_emotions(pipe, speech):
    names = pipe.rig.blendshape_names
    w = {r: expression_weights(Expression("happy", 1.0, "sad", r, blinks=False), SHORT, names=names)
         for r in (0.0, 0.5, 1.0)}
    np.testing.assert_allclose(w[0.0], expression_weights(Expression("happy", blinks=False), SHORT, names=names))
    np.testing.assert_allclose(w[1.0], expression_weights(Expression("sad", blinks=False), SHORT, names=names))
    np.testing.assert_allclose(w[0.5], (w[0.0] + w[1.0]) / 2, atol=1e-6)
    assert np.abs(w[0.0] - w[1.0]).max() > 0.3  # the two emotions differ, so the mix means something
    d_e = pipe.expression_deformation(Expression("happy", 1.0, "sad", 0.5, blinks=False), SHORT)
    fused, weights = pipe.fuse(speech[1][:SHORT], d_e, "ours")
    assert np.isfinite(fused).all() and weights["expression_weights"].shape[0] == SHORT
    with pytest.raises(ValueError, match="mix ratio"):
        Expression("happy", 1.0, "sad", 1.5)


@pytest.fixture(scope="module")
def references(pipe, tmp_path_factory):
    """The same 20-frame surprise as ARKit weights (T', 52) and as rig vertices (T', V, 3)."""
    folder = tmp_path_factory.mktemp("references")
    ramp = np.linspace(0.0, 1.0, 20, dtype=np.float32)[:, None]
    weights = ramp * emotion_weights("surprised", 1.0, pipe.rig.blendshape_names)[None]  # (20, 52)
    np.save(folder / "weights.npy", weights)
    np.save(folder / "vertices.npy", pipe.rig(weights).astype(np.float32))
    np.savez(folder / "vertices.npz", v=pipe.rig(weights))
    return folder, weights


@pytest.mark.parametrize("name", ["weights.npy", "vertices.npy", "vertices.npz"])
def test_reference_sequence_loops_to_the_speech_length(pipe, references, name):
    folder, weights = references
    d_e = load_reference(folder / name, pipe.rig, 45)
    expected = pipe.rig.displacement(weights)  # (20, V, 3)
    assert d_e.shape == (45, pipe.rig.num_vertices, 3) and d_e.dtype == np.float32
    np.testing.assert_allclose(d_e[:20], expected, atol=1e-6)
    np.testing.assert_allclose(d_e[20:40], expected, atol=1e-6)  # looped
    np.testing.assert_allclose(load_reference(folder / name, pipe.rig, 5), expected[:5], atol=1e-6)  # cut


@pytest.mark.parametrize("make, message", [
    (lambda rig: np.zeros((10, 51)), "has shape"),
    (lambda rig: np.zeros((10, rig.num_vertices, 2)), "has shape"),
    (lambda rig: np.zeros((10, rig.num_vertices - 1, 3)), "has shape"),
    (lambda rig: np.zeros(52), "has shape"),
    (lambda rig: np.zeros((0, 52)), "empty"),
    (lambda rig: np.full((4, 52), np.nan), "NaN"),
    (lambda rig: rig(np.zeros((3, 52))) * 1000, "moves vertices"),  # millimetres, not metres
    (lambda rig: np.array([["a"] * 52]), "expected real numbers"),
    (lambda rig: np.array([None, 1], dtype=object), "cannot read"),  # would need pickle
])
def test_reference_bad_content_is_rejected(pipe, tmp_path, make, message):
    path = tmp_path / "ref.npy"
    np.save(path, make(pipe.rig), allow_pickle=True)
    with pytest.raises(ValueError, match=message):
        load_reference(path, pipe.rig, 10)


def test_reference_bad_files_are_rejected(pipe, tmp_path):
    (tmp_path / "text.npy").write_text("not numpy")
    np.savez(tmp_path / "two.npz", a=np.zeros((3, 52)), b=np.zeros((3, 52)))
    (tmp_path / "weights.txt").write_text("0 " * 52)
    for name, message in [("text.npy", "cannot read"), ("two.npz", "holds 2 arrays"),
                          ("weights.txt", "must be a .npy or .npz"), ("missing.npy", "does not exist")]:
        with pytest.raises(ValueError, match=message):
            load_reference(tmp_path / name, pipe.rig, 10)


def test_animate_rejects_bad_input_before_the_slow_work(pipe, tmp_path, monkeypatch):
    def slow(*args, **kwargs):
        raise AssertionError("the audio front end ran before the input was validated")

    monkeypatch.setattr(pipe, "speech_input", slow)
    np.save(tmp_path / "bad.npy", np.zeros((5, 7)))
    bad = [
        ({"reference": tmp_path / "bad.npy"}, "has shape"),
        ({"emotion": "joyful"}, "valid emotions: " + ", ".join(EMOTIONS)),
        ({"intensity": 1.6}, "intensity"),
        ({"intensity": float("nan")}, "intensity"),
        ({"timeline": "happy@1 sad@0.5"}, "must increase"),
        ({"timeline": "happy@one"}, "bad number"),
        ({"timeline": "happy@1:1.5", "intensity": 1.5}, "timeline entry happy@1"),  # 2.25 > 1.5
        ({"mix_with": "bored"}, "unknown second emotion"),
        ({"method": "average"}, "unknown method"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            pipe.animate(WAV, **kwargs)


def test_audio_arrays_are_validated_like_files(pipe):
    with pytest.raises(AudioError, match="silent"):
        pipe.speech_input(np.zeros(16000, np.float32))
    with pytest.raises(AudioError, match="NaN"):
        pipe.speech_input(np.full(16000, np.nan, np.float32))
    with pytest.raises(AudioError, match="at least"):
        pipe.speech_input(np.full(100, 0.1, np.float32))
    with pytest.raises(ValueError, match="not both"):
        pipe.speech_input(np.zeros(16000, np.float32), text="hello")


def test_animate_end_to_end_with_mix(pipe):
    """The whole path from an audio array + transcript (forced alignment) to an Animation."""
    audio = load_audio(WAV)
    seen = []
    anim = pipe.animate(audio, transcript=TRANSCRIPT, emotion="happy", mix_with="surprised", mix_ratio=0.3,
                        intensity=0.8, progress=lambda fraction, what: seen.append((fraction, what)))
    t = num_frames(len(audio))
    assert anim.vertices.shape == (t, pipe.rig.num_vertices, 3) and np.isfinite(anim.vertices).all()
    assert abs(anim.duration - len(audio) / 16000) < 1e-9 and anim.num_frames == t
    assert anim.arkit_weights.shape == (t, 52) and anim.arkit_names == tuple(pipe.rig.blendshape_names)
    assert anim.speech_weights.shape[0] == anim.expression_weights.shape[0] == t
    assert anim.meta["expression"] == "happy + surprised (0.3) x0.8"
    assert anim.meta["method"] == "ours" and anim.meta["phones"] in ("aligned", "recognized")
    assert set(anim.meta["timings"]) == {"audio front end", "speech model", "expression", "dfm", "head motion"}
    assert anim.head_rotation.shape == (t, 3) and anim.gaze.shape == (t, 2)
    assert [f for f, _ in seen] == sorted(f for f, _ in seen) and seen[-1] == (1.0, "done")
    # The expression shows on the upper face once it has eased in (0.4 s), the mouth still moves.
    d = anim.vertices - pipe.rig.vertices[None]
    assert upper_face(pipe, d)[15:].min() > 0.3e-3
    assert np.ptp(pipe.rig.lip_gap(anim.vertices)) > 2e-3


def test_methods_are_the_documented_ones():
    assert METHODS == ("ours", "eq13", "interpolation", "speech_only")


def test_the_emotion_bows_or_lifts_the_head(pipe):
    """The posture rides on the speech's motion: sad bows the head and lowers the eyes, a timeline
    eases it in, a reference file (no emotion) adds none."""
    from blendtalk.expression.emotions import emotion_posture

    audio = load_audio(WAV)[: 16000]
    neutral, sad = (pipe.animate(audio, transcript="author", emotion=e, seed=3, blinks=False) for e in ("neutral", "sad"))
    np.testing.assert_allclose(np.degrees(sad.head_rotation - neutral.head_rotation), np.tile(emotion_posture("sad")[:3], (neutral.num_frames, 1)), atol=1e-3)
    assert np.degrees(sad.gaze[:, 1] - neutral.gaze[:, 1]).max() < -2.0  # eyes down 8 deg, in a head bowed 5
    late = pipe.animate(audio, transcript="author", timeline="neutral@0 sad@0.5", seed=3, blinks=False)
    np.testing.assert_array_equal(late.head_rotation[:15], neutral.head_rotation[:15])
    np.testing.assert_allclose(late.head_rotation[-1], sad.head_rotation[-1], atol=1e-6)


@pytest.mark.slow
def test_head_motion_switch_seed_and_render(pipe):
    """On by default, seeded, None when off; rendering turns the head (and only then changes the frames)
    and keeps it inside the frame at the config's largest angles."""
    audio = load_audio(WAV)[: 16000]
    on = pipe.animate(audio, transcript="author", seed=3)
    again = pipe.animate(audio, transcript="author", seed=3)
    off = pipe.animate(audio, transcript="author", head_motion=False, seed=3)
    np.testing.assert_array_equal(on.head_rotation, again.head_rotation)
    assert np.abs(on.head_rotation).max() > np.radians(0.2) and off.head_rotation is None and off.gaze is None
    np.testing.assert_array_equal(on.vertices, off.vertices)  # vertices stay head-local
    still = next(pipe.render_frames(off, size=64, batch=4))
    moving = next(pipe.render_frames(on, size=64, batch=4))
    np.testing.assert_array_equal(still, pipe.renderer(64)(off.vertices[:4]))
    assert np.abs(moving.astype(int) - still.astype(int)).max() > 0
    # The largest pose the config allows keeps the head off the frame's border (one background-coloured
    # ring, drawn without the neck, which leaves the frame by design); with it, the top stays clear.
    from dataclasses import replace

    from blendtalk.render.renderer import Renderer

    extreme = np.radians([[s * pipe.head_motion_config.max_pitch_deg, y * pipe.head_motion_config.max_yaw_deg,
                           r * pipe.head_motion_config.max_roll_deg] for s in (-1, 1) for y in (-1, 1) for r in (-1, 1)])
    verts = np.broadcast_to(pipe.rig.vertices.astype(np.float32), (len(extreme), *pipe.rig.vertices.shape))
    posed = Animation(verts, pipe.rig.triangles, np.zeros(16000, np.float32), head_rotation=extreme)
    frames = next(pipe.render_frames(posed, size=96, batch=8))
    background = frames[0, 0, 0]
    assert (frames[:, 0] == background).all() and (frames[:, -1] != background).any(-1).all(-1).any()
    head = Renderer.for_rig(pipe.rig, replace(pipe.renderer(96).config, neck=False))(verts, head_rotation=extreme)
    border = np.concatenate([head[:, 0], head[:, -1], head[:, :, 0], head[:, :, -1]], 1)
    assert (border == background).all()


def test_a_renderer_prepared_in_the_background_is_built_once_and_draws_the_same(pipe, monkeypatch):
    """prepare_renderer builds (and warms) the renderer on a thread while the caller goes on; the
    caller's renderer() waits for that build instead of making a second, and draws what a renderer
    built in the usual way draws."""
    import blendtalk.render.renderer as renderer_module

    built = []
    for_rig = renderer_module.Renderer.for_rig.__func__
    monkeypatch.setattr(renderer_module.Renderer, "for_rig",
                        classmethod(lambda cls, *a, **k: built.append(1) or for_rig(cls, *a, **k)))
    fresh = Pipeline(rig=pipe.rig, device=pipe.device)
    thread = fresh.prepare_renderer(72)
    renderer = fresh.renderer(72)  # while the thread may still be building
    thread.join()
    assert built == [1] and fresh.renderer(72) is renderer
    verts = pipe.rig.vertices[None] + 0.002 * np.sin(np.arange(3))[:, None, None].astype(np.float32)  # (3, V, 3)
    np.testing.assert_array_equal(renderer(verts), pipe.renderer(72)(verts))


@pytest.mark.parametrize("kwargs, message", [
    (dict(head_motion="no"), "head_motion must be true or false"),
    (dict(seed=-1), "seed must be an integer"),
    (dict(seed=2**32), "seed must be an integer"),
])
def test_bad_head_motion_arguments_are_refused(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe.animate(load_audio(WAV), **kwargs)