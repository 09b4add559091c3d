"""Head and eye motion: determinism, bounds, smoothness, following the speech, and the rigid rotation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from blendtalk.speech.audio import load_audio, num_frames
from blendtalk.constants import ASSETS_DIR, FPS, SAMPLE_RATE
from blendtalk.expression.head_motion import (
    HeadMotionConfig, check_seed, head_pivot, prosody, rotate_head, rotation_matrix, speech_head_motion,
)

WAV = ASSETS_DIR / "audio" / "arctic_a0009.wav"


@pytest.fixture(scope="module")
def speech():
    return load_audio(WAV)  # (S,) 3.1 s


@pytest.fixture(scope="module")
def speech_pause_speech(speech):
    """Speech, 4 s of near-silence, speech again: (S,)."""
    rng = np.random.default_rng(0)
    quiet = (1e-4 * rng.standard_normal(4 * SAMPLE_RATE)).astype(np.float32)
    return np.concatenate([speech, quiet, speech])


def test_same_seed_same_motion_other_seed_other_motion(speech):
    t = num_frames(len(speech))
    a, b, c = (speech_head_motion(speech, t, seed=s) for s in (5, 5, 6))
    assert a[0].shape == (t, 3) and a[1].shape == (t, 2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert np.abs(a[0] - c[0]).max() > np.radians(0.1)


@pytest.mark.parametrize("seed", range(8))
def test_bounded_by_the_config(speech_pause_speech, seed):
    cfg = HeadMotionConfig(max_pitch_deg=2.0, max_yaw_deg=3.0, max_roll_deg=1.0, max_gaze_deg=8.0)
    head, gaze = speech_head_motion(speech_pause_speech, num_frames(len(speech_pause_speech)), seed, cfg)
    assert (np.degrees(np.abs(head)).max(0) <= [2.0, 3.0, 1.0]).all()
    assert np.degrees(np.abs(gaze)).max() <= 8.0


def test_head_is_smooth_and_gaze_moves_in_saccades(speech_pause_speech):
    t = num_frames(len(speech_pause_speech))
    for seed in range(5):
        head, gaze = speech_head_motion(speech_pause_speech, t, seed)
        velocity = np.degrees(np.abs(np.diff(head, axis=0))) * FPS  # (T-1, 3) deg/s
        assert velocity.max() < 30.0  # natural speech head motion stays well below this
        accel = np.degrees(np.abs(np.diff(head, 2, axis=0))) * FPS**2
        assert accel.max() < 600.0  # C1: no velocity jumps (a 1 deg step would be 900 deg/s^2)
        # Gaze: still between saccades (only the slow VOR counter-rotation), a few fast jumps.
        step = np.degrees(np.linalg.norm(np.diff(gaze, axis=0), axis=1))  # (T-1,) deg per frame
        fast = step > 1.0
        assert fast.sum() >= 3
        assert np.median(step) < 0.3


def test_more_motion_in_speech_than_in_a_pause_and_the_head_settles(speech, speech_pause_speech):
    t = num_frames(len(speech_pause_speech))
    first = num_frames(len(speech))
    pause = slice(first + int(1.5 * FPS), first + int(3.5 * FPS))  # the middle of the 4 s pause
    talk = slice(0, first)
    for seed in range(5):
        head, gaze = speech_head_motion(speech_pause_speech, t, seed)
        speed = np.abs(np.diff(head, axis=0)).sum(1)
        assert speed[talk].mean() > 2 * speed[pause].mean()
        assert np.degrees(np.abs(head[pause])).max() < 2.0  # settled near rest
        saccades = lambda s: (np.degrees(np.linalg.norm(np.diff(gaze[s], axis=0), axis=1)) > 1.0).sum() / (len(gaze[s]) / FPS)
        rates = [saccades(talk), saccades(pause)]
        assert rates[0] >= rates[1]


def test_prosody_finds_speech_pitch_and_pauses(speech_pause_speech, speech):
    t = num_frames(len(speech_pause_speech))
    p = prosody(speech_pause_speech, t)
    first = num_frames(len(speech))
    assert p.activity[first // 2] > 0.9 and p.activity[first + 2 * FPS] < 0.1
    assert p.voiced[:first].mean() > 0.3 and p.voiced[first + FPS : first + 3 * FPS].sum() == 0
    assert p.prominence[first + FPS : first + 3 * FPS].max() == 0


def test_prosody_tracks_a_known_pitch():
    sr = SAMPLE_RATE
    time = np.arange(sr) / sr
    f0 = np.where(time < 0.5, 150.0, 150.0 * 2 ** (4 / 12))  # four semitones up half-way
    tone = 0.3 * np.sign(np.sin(2 * np.pi * np.cumsum(f0) / sr)).astype(np.float32)  # rich in harmonics
    p = prosody(tone, num_frames(sr))
    rise = p.semitones[20:25].mean() - p.semitones[5:10].mean()
    assert abs(rise - 4.0) < 0.5
    assert p.voiced[2:-2].all()


def test_fast_enough(speech):
    import time

    audio = np.tile(speech, 4)[: 10 * SAMPLE_RATE]
    t = num_frames(len(audio))
    speech_head_motion(audio, t, 0)
    t0 = time.perf_counter()
    speech_head_motion(audio, t, 1)
    assert time.perf_counter() - t0 < 0.5  # about 0.03 s on a laptop core; slack for a busy machine


def test_rotate_head_is_rigid_and_keeps_the_pivot():
    rng = np.random.default_rng(0)
    verts = rng.normal(size=(4, 50, 3))
    angles = rng.uniform(-0.2, 0.2, (4, 3))
    pivot = np.array([0.0, 0.6, 0.02])
    out = rotate_head(verts, angles, pivot)
    d_in = np.linalg.norm(verts[:, :, None] - verts[:, None], axis=-1)
    d_out = np.linalg.norm(out[:, :, None] - out[:, None], axis=-1)
    np.testing.assert_allclose(d_out, d_in, atol=1e-12)
    np.testing.assert_allclose(rotate_head(np.broadcast_to(pivot, (4, 1, 3)), angles, pivot)[:, 0], np.tile(pivot, (4, 1)), atol=1e-12)
    r = rotation_matrix(angles)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-12)
    tv = rotate_head(torch.tensor(verts), torch.tensor(angles), torch.tensor(pivot)).numpy()
    np.testing.assert_allclose(tv, out, atol=1e-12)


def test_signs_follow_the_documented_convention():
    nose, top = np.array([[0.0, 0.0, 1.0]]), np.array([[0.0, 1.0, 0.0]])
    origin = np.zeros(3)
    assert rotate_head(nose, np.array([0.1, 0, 0]), origin)[0, 1] < 0  # pitch +: nods down
    assert rotate_head(nose, np.array([0, 0.1, 0]), origin)[0, 0] > 0  # yaw +: nose toward +x (the face's left)
    assert rotate_head(top, np.array([0, 0, 0.1]), origin)[0, 0] > 0  # roll +: top toward +x


def test_pivot_is_in_the_neck_below_and_behind_the_jaw():
    from blendtalk.face.rig import load_rig

    rig = load_rig()
    pivot = head_pivot(rig.vertices)
    mouth = rig.vertices[rig.masks["mouth"]]
    assert pivot[1] < mouth[:, 1].min() + 0.02 and pivot[2] < mouth[:, 2].min() - 0.05 and abs(pivot[0]) < 1e-9


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_yaw_deg=40.0), "max_yaw_deg"),
    (dict(max_pitch_deg=0.0), "max_pitch_deg"),
    (dict(aversion_speech=1.5), "aversion_speech"),
    (dict(drift_deg=(1.0, 2.0)), "drift_deg"),
    (dict(fixation_min_s=2.0, fixation_max_s=1.0), "fixation_min_s"),
    (dict(beat_deg=float("nan")), "beat_deg"),
])
def test_config_out_of_range_is_one_clear_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        HeadMotionConfig(**kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, True, "3"])
def test_bad_seeds_are_refused(seed):
    with pytest.raises(ValueError, match="seed"):
        check_seed(seed)


def test_posture_turns_the_head_and_the_eyes_keep_their_target(speech):
    from blendtalk.expression.head_motion import add_posture

    t = num_frames(len(speech))
    head, gaze = speech_head_motion(speech, t, seed=1)
    same = add_posture(head, gaze, np.zeros((t, 5)))
    assert same[0] is head and same[1] is gaze  # neutral: the motion untouched
    posture = np.tile([5.0, 3.0, -1.5, 0.0, -8.0], (t, 1))  # bowed, turned, eyes down
    h, g = add_posture(head, gaze, posture)
    np.testing.assert_allclose(np.degrees(h - head), posture[:, :3], atol=1e-4)
    # Eyes: down 8 deg in the world, so 3 deg down in a head bowed 5 deg; 3 deg against the turn.
    cfg = HeadMotionConfig()
    want = cfg.max_gaze_deg * np.tanh((np.degrees(gaze) + [-3.0, -3.0]) / cfg.max_gaze_deg)
    np.testing.assert_allclose(np.degrees(g), want, atol=1e-4)
    h, g = add_posture(head, gaze, np.tile([0, 0, 0, 90.0, -90.0], (t, 1)))
    assert np.abs(np.degrees(g)).max() < cfg.max_gaze_deg
    with pytest.raises(ValueError, match="posture"):
        add_posture(head, gaze, np.zeros((t, 3)))
