import numpy as np
import pytest

from blendtalk.constants import FPS
from blendtalk.expression.emotions import (
    activation,
    ARKIT_NAMES, AU_TO_ARKIT, EMOTION_AUS, EMOTIONS, Keyframe, SubjectStyle, add_blinks, au_weights, blinks,
    emotion_curve, emotion_weights, envelope, mix, parse_timeline, pause_share, timeline_weights, yield_to_closure,
)
from blendtalk.face.rig import REGIONS

MM = 1e-3


def support(rig, *units, threshold=0.5 * MM):
    """Vertices that any of `units` moves by more than `threshold`."""
    return np.any([np.linalg.norm(rig.deltas[rig.index(u)], axis=-1) > threshold for u in units], axis=0)


def test_names_and_tables_match_the_rig(rig):
    assert rig.blendshape_names == ARKIT_NAMES
    assert set(EMOTION_AUS) == set(EMOTIONS)
    w = au_weights({f"AU{n}": 1.0 for n in AU_TO_ARKIT})  # every unit named in the table exists
    assert w.shape == (52,) and w.min() >= 0 and (w > 0).sum() > 25
    with pytest.raises(ValueError, match="unknown action unit"):
        au_weights({"AU99": 1.0})


def test_emotion_weights_validation():
    assert not emotion_weights("neutral").any()
    w = emotion_weights("happy", 0.5)
    assert w.shape == (52,) and w.dtype == np.float32 and 0 <= w.min() and w.max() <= 1
    np.testing.assert_allclose(w, activation(0.5) * emotion_weights("happy"), atol=1e-7)
    assert 0.6 < activation(0.5) < 0.75 and activation(0.0) == 0 and activation(1.0) == 1  # 0.5 is plain, not faint
    assert all(np.diff([activation(s) for s in np.linspace(0, 1, 11)]) > 0)  # more intensity, more expression
    np.testing.assert_array_equal(emotion_weights("Surprise"), emotion_weights("surprised"))
    assert emotion_weights("angry", 1.5).max() <= 1
    # Past the apex every unit short of 1 bends toward 1 without a kink: the slope at 1 continues it.
    for emotion in EMOTIONS[1:]:
        below, apex, above = (emotion_weights(emotion, s) for s in (0.999, 1.0, 1.001))
        room = apex < 0.99
        np.testing.assert_allclose((above - apex)[room], (apex - below)[room], atol=2e-5)
        assert (emotion_weights(emotion, 1.5) >= apex - 1e-7).all() and emotion_weights(emotion, 1.5).max() <= 1
    with pytest.raises(ValueError, match="valid emotions: neutral, happy, sad"):
        emotion_weights("joyful")
    for bad in (-0.1, 1.6, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="intensity"):
            emotion_weights("happy", bad)


def test_prototypes_move_the_face_as_their_action_units_say(rig):
    v = rig.vertices
    lips = rig.mask("lips")
    corner = lips & (np.abs(v[:, 0]) > 0.8 * np.abs(v[lips, 0]).max())
    brow_inner = support(rig, "browInnerUp") & (np.abs(v[:, 0]) < 0.02)
    brow = support(rig, "browDownLeft", "browDownRight")
    below_eyes = v[:, 1] < v[rig.mask("eyes"), 1].min()
    nose_wings = support(rig, "noseSneerLeft", "noseSneerRight") & below_eyes & ~lips

    def dy(emotion, mask):
        return rig.displacement(emotion_weights(emotion))[mask, 1].mean()

    assert dy("happy", corner) > 3 * MM  # AU12 raises the mouth corners
    assert dy("happy", support(rig, "cheekSquintLeft") & ~rig.mask("mouth")) > 0.5 * MM  # AU6 lifts the cheeks
    assert dy("sad", corner) < -1 * MM and dy("sad", brow_inner) > 0  # AU15, AU1
    def peak_dy(emotion, mask):
        return rig.displacement(emotion_weights(emotion))[mask, 1]

    # Legible brows: AU1 + AU2 and AU4 at the top of the scale use the rig's whole 5-7 mm of brow travel.
    assert peak_dy("surprised", brow).max() > 6 * MM and peak_dy("angry", brow).min() < -5 * MM
    assert peak_dy("sad", brow_inner).max() > 2 * MM and peak_dy("sad", brow).min() < -3 * MM  # oblique sad brows
    assert rig.lip_gap(rig(emotion_weights("surprised"))) > 5 * MM  # AU25 + 26: the jaw drops
    for emotion in EMOTIONS:  # at a speech closure no prototype holds the lips apart by more than a trace
        closing = yield_to_closure(emotion_weights(emotion)[None], np.zeros(1))
        assert rig.lip_gap(rig(closing))[0] < 0.5 * MM, emotion
    assert dy("fearful", brow_inner) > 0 and dy("fearful", corner) < 0  # AU1, AU20
    assert dy("angry", brow) < -0.5 * MM  # AU4 lowers the brows
    assert dy("disgusted", nose_wings) > 0.5 * MM  # AU9 pulls the sides of the nose up
    right, left = corner & (v[:, 0] < 0), corner & (v[:, 0] > 0)  # +x is the face's left
    assert dy("contempt", right) > dy("contempt", left) + 3 * MM  # unilateral AU12 + AU14
    for emotion in EMOTIONS[1:]:
        assert np.linalg.norm(rig.displacement(emotion_weights(emotion)), axis=-1).max() > 2 * MM, emotion


def test_displacement_per_region_is_plausible(rig):
    """Render-free check: mean/max displacement per region and emotion (run with -s to see the table)."""
    print(f"\n{'emotion':10s} int " + " ".join(f"{r:>14s}" for r in REGIONS) + "   (mean/max mm)")
    for emotion in EMOTIONS:
        for intensity in (1.0, 1.5):
            n = np.linalg.norm(rig.displacement(emotion_weights(emotion, intensity)), axis=-1) / MM  # (V,)
            print(f"{emotion:10s} {intensity:.1f} " + " ".join(
                f"{n[rig.mask(r)].mean():6.2f}/{n[rig.mask(r)].max():6.2f}" for r in REGIONS))
            # Nothing moves more than 3.2 cm at the apex: surprise's dropped and rounded jaw, the largest
            # motion (the rig's full jawOpen moves the chin 3.9 cm), goes a little further when exaggerated.
            assert n.max() < (32 if intensity <= 1 else 36), (emotion, intensity)
            assert n[rig.mask("upper_face")].max() < 15
            # A dropped jaw stays a moderate one (closures take it back: test_lip_parting_yields_to_closures_only):
            # surprise's, the widest, parts the lips about 2 cm at the apex, half an adult's widest opening.
            assert rig.lip_gap(rig(emotion_weights(emotion, intensity))) < (24 if intensity <= 1 else 27) * MM


def test_mix():
    np.testing.assert_array_equal(mix("happy", "sad", 0.0), emotion_weights("happy"))
    np.testing.assert_array_equal(mix("happy", "sad", 1.0, 0.7), emotion_weights("sad", 0.7))
    np.testing.assert_allclose(mix("happy", "sad", 0.5), (emotion_weights("happy") + emotion_weights("sad")) / 2)
    with pytest.raises(ValueError, match="ratio"):
        mix("happy", "sad", 1.2)
    with pytest.raises(ValueError, match="valid emotions"):
        mix("happy", "bored", 0.5)


def test_envelope_and_curve_reach_the_apex():
    env = envelope(90, onset=0.5, apex=1.0, offset=0.5, start=0.2)
    t = np.arange(90) / FPS
    assert env[t < 0.2].max() == 0 and env[(t >= 0.7) & (t <= 1.7)].min() == pytest.approx(1.0)
    assert env[-1] < 0.2 and np.abs(np.diff(env)).max() < 0.11  # raised cosine: <= pi/2 * dt/onset
    w = emotion_curve("surprised", 90, intensity=0.8, onset=0.3, offset=0.3)
    apex = emotion_weights("surprised", 0.8)
    np.testing.assert_allclose(w.max(0), apex, atol=1e-6)
    assert not w[0].any() and np.abs(w[-1]).max() < 1e-6  # neutral -> apex -> neutral
    hold = emotion_curve("sad", 60, onset=0.2, offset=0.0)  # held to the end
    np.testing.assert_allclose(hold[-1], emotion_weights("sad"), atol=1e-6)
    with pytest.raises(ValueError, match="onset"):
        envelope(10, onset=-1, apex=None, offset=0.1)


def test_subject_variation():
    a = emotion_curve("happy", 60, seed=3, variation=0.3)
    np.testing.assert_array_equal(a, emotion_curve("happy", 60, seed=3, variation=0.3))
    assert not np.allclose(a, emotion_curve("happy", 60, seed=4, variation=0.3))
    assert not np.allclose(a, emotion_curve("happy", 60))
    subject = SubjectStyle(np.ones(52, np.float32), asymmetry=0.2)
    w = subject.apply(emotion_weights("happy"))
    assert w[ARKIT_NAMES.index("mouthSmileLeft")] > w[ARKIT_NAMES.index("mouthSmileRight")]
    with pytest.raises(ValueError, match="asymmetry"):
        SubjectStyle(np.ones(52, np.float32), asymmetry=1.5)


def test_blinks_close_the_eyes_briefly(rig):
    num_frames = 60 * FPS
    w = blinks(num_frames, seed=0, rate_per_min=17)
    blink = w[:, ARKIT_NAMES.index("eyeBlinkLeft")]
    np.testing.assert_array_equal(blink, w[:, ARKIT_NAMES.index("eyeBlinkRight")])
    assert np.count_nonzero(w.any(0)) == 2
    shut = blink > 0.05
    starts = np.flatnonzero(shut[1:] & ~shut[:-1])
    lengths = [np.argmin(shut[s + 1:]) for s in starts]
    assert 8 <= len(starts) <= 30 and max(lengths) <= 9  # ~17/min, each under 300 ms
    assert blink.max() > 0.85 and (blink > 0.5).mean() < 0.1
    lid = rig.deltas[rig.index("eyeBlinkLeft"), :, 1]
    upper, lower = lid < -1 * MM, (lid > 1 * MM) & rig.mask("eyes")

    def aperture(vertices):  # left eye: upper-lid height over lower-lid height
        return vertices[upper, 1].mean() - vertices[lower, 1].mean()

    assert aperture(rig(w[np.argmax(blink)])) < 0.25 * aperture(rig.vertices)
    assert not blinks(100, seed=0, rate_per_min=0).any()
    # a blink closes the eyes even in surprise
    curve = emotion_curve("surprised", num_frames, onset=0.1, offset=0.0, seed=0, blink_rate=17)
    k = np.argmax(curve[:, ARKIT_NAMES.index("eyeBlinkLeft")])
    wide = ARKIT_NAMES.index("eyeWideLeft")
    assert curve[k, wide] < 0.2 * emotion_weights("surprised")[wide]
    with pytest.raises(ValueError, match="must match"):
        add_blinks(curve, w[:10])


def test_a_blink_on_a_raised_cheek_stops_at_the_lower_lid(rig):
    names = rig.blendshape_names
    shut = np.zeros((1, 52), np.float32)
    shut[0, [rig.index("eyeBlinkLeft"), rig.index("eyeBlinkRight")]] = 1.0
    # The left upper lid's margin, a vertex per column across the eye, and the lower-lid vertex each meets.
    blink = rig.deltas[rig.index("eyeBlinkLeft")]
    upper = np.flatnonzero(blink[:, 1] < -4 * MM)
    closed = rig.vertices[upper, 1] + blink[upper, 1]
    x = rig.vertices[upper, 0]
    column = np.digitize(x, np.linspace(x.min(), x.max(), 9)[1:-1])
    margin = np.array([upper[column == c][np.argmin(closed[column == c])] for c in range(8)])
    still = np.flatnonzero(np.abs(blink[:, 1]) < 1.5 * MM)
    meets = rig.vertices[margin] + blink[margin]
    partner = still[np.argmin(np.linalg.norm(rig.vertices[still][None] - meets[:, None], axis=-1), axis=1)]

    def sunk(w):  # mm by which the upper lid's margin ends below the lower lid, at the deepest column
        v = rig(w)
        return ((v[partner, 1] - v[margin, 1]) / MM).max()

    neutral = sunk(add_blinks(emotion_weights("neutral", names=names)[None], shut, names)[0])
    squint = np.isin(names, ["eyeSquintLeft", "eyeSquintRight"])
    for emotion in ("happy", "disgusted"):
        w = emotion_weights(emotion, names=names)[None]
        blinked = add_blinks(w, shut, names)[0]
        assert blinked[rig.index("eyeBlinkLeft")] < 1.0  # the raised cheek has closed part of the eye
        assert sunk(blinked) <= neutral  # the lids meet no deeper than in a neutral blink
        full = np.where(squint, 0.0, np.maximum(w[0], shut[0]))  # the whole blink on the raised cheek
        assert sunk(full) > neutral + 1.0  # it sank through the lower lid (the grey band of lashes)


def test_parse_timeline():
    assert parse_timeline("neutral@0 happy@1.5 sad@4.0") == [
        Keyframe("neutral", 0.0), Keyframe("happy", 1.5), Keyframe("sad", 4.0)]
    assert parse_timeline(" Happy@0.5:0.8,  fear@2 ") == [Keyframe("happy", 0.5, 0.8), Keyframe("fearful", 2.0)]
    bad = {
        "": "empty", "happy": "bad timeline token", "happy@": "bad timeline token", "happy@x": "bad number",
        "@1": "bad timeline token", "happy@1:": "bad timeline token", "joy@1": "valid emotions",
        "happy@-1": ">= 0", "happy@nan": "finite", "happy@1 sad@1": "must increase",
        "happy@2 sad@1": "must increase", "happy@1:2": "intensity",
    }
    for text, message in bad.items():
        with pytest.raises(ValueError, match=message):
            parse_timeline(text)


def test_timeline_weights():
    w = timeline_weights("happy@0.5 sad@2.0:0.5", 120, intensity=1.0, transition=0.4)
    t = np.arange(120) / FPS
    assert not w[t < 0.5].any()
    held = w[(t >= 0.9) & (t < 2.0)]
    np.testing.assert_allclose(held, np.broadcast_to(emotion_weights("happy"), held.shape), atol=1e-6)
    np.testing.assert_allclose(w[-1], emotion_weights("sad", 0.5), atol=1e-6)
    assert np.abs(np.diff(w, axis=0)).max() < 0.15  # smooth transitions
    # keys closer than the transition still give a continuous curve
    quick = timeline_weights([("happy", 0.0), ("angry", 0.1), ("sad", 0.2)], 30, transition=0.4)
    assert np.abs(np.diff(quick, axis=0)).max() < 0.15
    step = timeline_weights("happy@0 sad@0.5", 30, transition=0.0)
    np.testing.assert_array_equal(step[14], emotion_weights("happy"))
    np.testing.assert_array_equal(step[15], emotion_weights("sad"))
    with pytest.raises(ValueError, match="intensity x entry"):
        timeline_weights("happy@0:1.5", 10, intensity=1.2)
    with pytest.raises(ValueError, match="transition"):
        timeline_weights("happy@0", 10, transition=-1)


def test_lip_parting_yields_to_closures_only():
    """Where the speech closes the lips (gap 0) the raised upper lip gives way; corners, brows and
    lids stay; with the speech's lips apart the expression is untouched."""
    w = np.repeat(emotion_weights("disgusted")[None], 7, 0)
    gap = np.array([3, 3, 3, 0, 3, 3, 3], dtype=np.float64) * MM
    out = yield_to_closure(w, gap)
    up = ARKIT_NAMES.index("mouthUpperUpLeft")
    assert out[3, up] == 0 and out[2, up] == 0 and out[4, up] == 0  # a frame either side too
    np.testing.assert_array_equal(out[[0, 6]], w[[0, 6]])
    keep = [ARKIT_NAMES.index(n) for n in ("noseSneerLeft", "mouthFrownLeft", "browDownLeft", "mouthShrugLower")]
    np.testing.assert_array_equal(out[:, keep], w[:, keep])
    with pytest.raises(ValueError, match="share T"):
        yield_to_closure(w, gap[:5])


def test_pause_share_is_one_deep_in_a_silence_and_zero_near_speech():
    """1 s of speech, 1.5 s of silence, 1 s of speech: the middle of the pause is a pause, the
    phones and the frames just around them are not; a clip's silent start is a pause of any length."""
    silent = np.array([False] * 30 + [True] * 45 + [False] * 30)
    p = pause_share(silent)
    assert p.shape == (105,) and p.min() >= 0 and p.max() <= 1
    assert (p[:30] == 0).all() and (p[75:] == 0).all()
    assert (p[30:30 + int(0.2 * FPS)] == 0).all()  # a closure inside speech is shorter than the settle time
    assert (p[45:69] == 1).all()  # 0.45 s after the last phone .. 0.2 s before the next
    assert p[74] < 0.1
    start = pause_share(np.array([True] * 20 + [False] * 10))
    assert start[0] == 1 and start[19] < 0.1  # the clip starts at rest, and gives way before the first phone
    # Short silences between words never release the mouth.
    assert pause_share(np.array([False] * 10 + [True] * 6 + [False] * 10)).max() == 0


def test_a_live_window_sees_only_its_lookahead():
    silent = np.array([True] * 12)
    # Speech 3 frames ahead is beyond a 2-frame window: the frame is still deep in the pause ...
    assert pause_share(silent[:3], lookahead=2, since=20)[0] == 1
    # ... and once it is in sight the mouth gives way within the window.
    seen = pause_share(np.array([True, True, False]), lookahead=2, since=20)
    assert 0 < seen[0] < 1 and seen[2] == 0
    assert pause_share(np.array([True]), lookahead=0, since=3)[0] == 0  # 3 silent frames: still settling
    with pytest.raises(ValueError, match="silent"):
        pause_share(np.zeros((2, 2), bool))


def test_an_open_mouthed_emotion_keeps_its_mouth_deep_in_a_pause():
    w = np.repeat(emotion_weights("surprised")[None], 5, 0)
    closed = np.zeros(5)
    jaw = ARKIT_NAMES.index("jawOpen")
    out = yield_to_closure(w, closed, pause=np.array([0, 0.5, 1, 1, 0]))
    assert out[0, jaw] == 0 and out[4, jaw] == 0
    assert out[1, jaw] == pytest.approx(0.5 * w[1, jaw]) and (out[2:4] == w[2:4]).all()
    with pytest.raises(ValueError, match="pause"):
        yield_to_closure(w, closed, pause=np.ones(4))


def test_each_emotion_has_a_small_posture_that_follows_intensity_and_timelines():
    from blendtalk.expression.emotions import (EMOTION_POSTURE, EMOTIONS, emotion_posture, max_posture, mix_posture,
                                               timeline_posture)

    assert set(EMOTION_POSTURE) == set(EMOTIONS) and not np.any(emotion_posture("neutral"))
    for emotion in EMOTIONS:  # a few degrees: a talking face, not a pose
        p = emotion_posture(emotion, 1.5)
        assert np.abs(p[:3]).max() <= 6.0 and np.abs(p[3:]).max() <= 10.0
    sad = emotion_posture("sad")
    assert sad[0] > 3.0 and sad[4] < -5.0  # bowed, eyes down
    assert emotion_posture("angry")[0] > 0 > emotion_posture("surprised")[0]  # chin down; head up
    half, full, over = (emotion_posture("sad", i)[0] for i in (0.5, 1.0, 1.5))
    assert 0 < half < full < over < 1.2 * full  # 0.5 is moderate; above the apex it grows slowly
    np.testing.assert_allclose(mix_posture("sad", "happy", 0.25), 0.75 * sad + 0.25 * emotion_posture("happy"))
    np.testing.assert_array_equal(max_posture(), np.abs(np.array(list(EMOTION_POSTURE.values()))).max(0) * (over / sad[0]))
    track = timeline_posture("neutral@0 sad@1", 60, fps=30)  # (T, 5), eased over 0.4 s from 1 s on
    assert track.shape == (60, 5) and not track[:30].any()
    np.testing.assert_allclose(track[45], sad)
    assert 0 < track[33, 0] < sad[0]
    with pytest.raises(ValueError, match="emotion"):
        emotion_posture("bored")
    with pytest.raises(ValueError, match="ratio"):
        mix_posture("sad", "happy", 1.5)
