from pathlib import Path

import numpy as np
import pytest

from blendtalk.constants import ASSETS_DIR, FPS
from blendtalk.speech.phones import ARPABET, BILABIALS, Phone
from blendtalk.speech.visemes import (
    DIPHTHONG_GLIDES, PHONE_TO_VISEME, VISEME_DOMINANCE, VISEME_TARGETS, VISEMES, CoarticulationConfig,
    SpeakerStyle, VisemeDriver, random_phone_stream, viseme_of, viseme_targets, visemes_to_weights,
)

ARCTIC_PHONES = Path(ASSETS_DIR) / "audio" / "arctic_a0009.phones.txt"
MM = 1e-3


def arctic_phones() -> list[Phone]:
    """Real phone timings (CMU ARCTIC slt, 'He turned sharply, and faced Gregson across the table.')."""
    out = []
    for line in ARCTIC_PHONES.read_text().splitlines():
        if line and not line.startswith("#"):
            start, end, symbol = line.split()
            out.append(Phone(symbol, float(start), float(end)))
    return out


def frame_masks(phones, num_frames):
    """Frames (f / FPS) inside bilabials, far-enough-into silence, and per-phone frame masks."""
    t = np.arange(num_frames) / FPS
    inside = [(p, (t >= p.start) & (t < p.end)) for p in phones]
    bilabial = np.any([m for p, m in inside if p.symbol in BILABIALS], axis=0)
    speech = [(p.start, p.end) for p in phones if p.symbol != "sil"]
    dist = np.min([np.maximum(np.maximum(a - t, t - b), 0) for a, b in speech], axis=0)
    settled = dist >= CoarticulationConfig().silence_settle
    return bilabial, settled, inside


def sequences():
    """(name, phones, style): real timings and random streams, normal and fast, with random speakers."""
    yield "arctic", arctic_phones(), SpeakerStyle()
    for seed in range(4):
        rng = np.random.default_rng(seed)
        rate = (1.0, 1.4, 1.8, 1.0)[seed]
        yield f"random{seed}", random_phone_stream(8.0, rng, rate=rate), SpeakerStyle.random(seed)
    yield "arctic-lead", arctic_phones(), SpeakerStyle(timing_offset=-0.04, amplitude=1.2, jaw=1.25, smoothing=1.0)


def test_tables_cover_arpabet_and_rig(rig):
    assert set(PHONE_TO_VISEME) == set(ARPABET)
    assert set(PHONE_TO_VISEME.values()) == set(VISEMES) == set(VISEME_TARGETS) == set(VISEME_DOMINANCE)
    assert set(DIPHTHONG_GLIDES.values()) <= set(VISEMES)
    for p in BILABIALS:
        assert viseme_of(p) == "PP"
    targets = viseme_targets(rig)
    assert targets.shape == (len(VISEMES), 52) and targets.min() >= 0 and targets.max() <= 1
    assert not targets[VISEMES.index("sil")].any()


def test_bilabials_and_silence_close_the_lips(rig):
    for name, phones, style in sequences():
        num_frames = int(np.ceil(phones[-1].end * FPS))
        w = visemes_to_weights(phones, num_frames, rig, style)
        gap = rig.lip_gap(rig(w))
        bilabial, settled, _ = frame_masks(phones, num_frames)
        assert bilabial.sum() >= 3, name
        assert gap[bilabial].max() < 1 * MM, f"{name}: bilabial gap {gap[bilabial].max() / MM:.2f} mm"
        assert gap[settled].max() < 1 * MM, f"{name}: silence gap {gap[settled].max() / MM:.2f} mm"
        assert gap.max() > 5 * MM, f"{name}: the mouth never opens"


def test_short_bilabial_still_closes(rig):
    # a 20 ms /p/ falls between two frames; closure must still reach a frame
    phones = [Phone("sil", 0, 0.2), Phone("aa", 0.2, 0.41), Phone("p", 0.41, 0.43), Phone("aa", 0.43, 0.6),
              Phone("sil", 0.6, 1.0)]
    gap = rig.lip_gap(rig(visemes_to_weights(phones, 30, rig)))
    near = np.abs(np.arange(30) / FPS - 0.42) <= 0.5 / FPS + 1e-9
    assert gap[near].min() < 1 * MM
    assert gap[8] > 5 * MM  # the vowel before it still opens


def test_vowels_open_the_mouth(rig):
    phones = [Phone("sil", 0, 0.3), Phone("aa", 0.3, 0.6), Phone("sil", 0.6, 1.0)]
    gap = rig.lip_gap(rig(visemes_to_weights(phones, 30, rig)))
    assert gap[13] > 10 * MM  # middle of a sustained /aa/
    rng = np.random.default_rng(7)
    phones = random_phone_stream(20.0, rng)
    num_frames = int(np.ceil(phones[-1].end * FPS))
    gap = rig.lip_gap(rig(visemes_to_weights(phones, num_frames, rig)))
    _, _, inside = frame_masks(phones, num_frames)
    peaks = {v: [gap[m].max() for p, m in inside if viseme_of(p.symbol) == v and m.any()] for v in ("aa", "I", "PP")}
    assert np.mean(peaks["aa"]) > 5 * MM
    assert np.mean(peaks["aa"]) > np.mean(peaks["I"]) > np.mean(peaks["PP"])


def test_weights_shape_range_and_smoothness(rig):
    for name, phones, style in sequences():
        num_frames = int(np.ceil(phones[-1].end * FPS))
        w = visemes_to_weights(phones, num_frames, rig, style)
        assert w.shape == (num_frames, 52) and w.dtype == np.float32
        assert w.min() >= 0 and w.max() <= 1
        step = np.abs(np.diff(w, axis=0)).max()
        # the same targets switched at phone boundaries, without coarticulation
        t = np.arange(num_frames) / FPS
        ids = np.zeros(num_frames, dtype=int)
        for p in phones:
            ids[(t >= p.start) & (t < p.end)] = VISEMES.index(viseme_of(p.symbol))
        hard = np.abs(np.diff(viseme_targets(rig, style)[ids], axis=0)).max()
        assert step < 0.4, f"{name}: frame-to-frame change {step:.2f}"
        assert step < hard, name
        jaw = w[:, rig.index("jawOpen")]
        assert np.abs(np.diff(jaw, 2)).max() < 0.3, name  # no spikes


def test_style_changes_articulation(rig):
    phones = arctic_phones()
    base = visemes_to_weights(phones, 93, rig)
    big = visemes_to_weights(phones, 93, rig, SpeakerStyle(amplitude=1.2, jaw=1.25))
    jaw = rig.index("jawOpen")
    assert big[:, jaw].sum() > 1.3 * base[:, jaw].sum()
    skew = visemes_to_weights(phones, 93, rig, SpeakerStyle(asymmetry=0.2))
    left, right = rig.index("mouthStretchLeft"), rig.index("mouthStretchRight")
    assert skew[:, left].sum() > 1.3 * skew[:, right].sum()
    assert SpeakerStyle.random(3) == SpeakerStyle.random(3) != SpeakerStyle.random(4)
    with pytest.raises(ValueError, match="timing_offset"):
        SpeakerStyle(timing_offset=0.5)
    with pytest.raises(ValueError, match="amplitude"):
        SpeakerStyle(amplitude=-1)


def test_invalid_input(rig):
    with pytest.raises(ValueError, match="valid ARPAbet"):
        visemes_to_weights([Phone("xx", 0, 0.1)], 5, rig)
    with pytest.raises(ValueError, match="start < end"):
        visemes_to_weights([Phone("aa", 0.2, 0.1)], 5, rig)
    with pytest.raises(ValueError, match="sorted"):
        visemes_to_weights([Phone("aa", 0.2, 0.3), Phone("m", 0.0, 0.1)], 5, rig)
    with pytest.raises(ValueError, match="num_frames"):
        visemes_to_weights([Phone("aa", 0, 0.1)], 0, rig)


def test_empty_or_silent_input_rests_closed(rig):
    for phones in ([], [Phone("sil", 0, 1.0)]):
        w = visemes_to_weights(phones, 30, rig)
        assert np.abs(w).max() < 1e-6


def test_driver_returns_weights_and_displacement(rig):
    driver = VisemeDriver(rig, SpeakerStyle.random(0))
    phones = arctic_phones()
    w, d = driver(phones)
    assert w.shape == (int(np.ceil(3.075 * FPS)), 52)
    assert d.shape == (len(w), rig.num_vertices, 3) and d.dtype == np.float32
    np.testing.assert_allclose(d, rig.displacement(w), atol=1e-7)
    w2, _ = driver(phones, num_frames=40)  # smoothing sees a different end; the start is the same
    np.testing.assert_allclose(w2[:30], w[:30], atol=1e-6)


def test_random_phone_stream():
    a = random_phone_stream(5.0, np.random.default_rng(1))
    assert a == random_phone_stream(5.0, np.random.default_rng(1))
    assert a[0].symbol == a[-1].symbol == "sil" and a[0].start == 0 and a[-1].end == pytest.approx(5.0)
    for p, q in zip(a, a[1:]):
        assert p.end == pytest.approx(q.start) and p.start < p.end
        assert not (p.symbol == q.symbol == "sil")
    assert all(p.symbol in ARPABET for p in a)
    fast = random_phone_stream(5.0, np.random.default_rng(1), rate=2.0)
    assert len(fast) > len(a)


def test_chunked_coarticulation_matches_one_pass(rig, monkeypatch):
    import blendtalk.speech.visemes as visemes

    phones = random_phone_stream(12.0, np.random.default_rng(5))
    whole = visemes_to_weights(phones, 360, rig)
    monkeypatch.setattr(visemes, "CHUNK_FRAMES", 37)
    np.testing.assert_allclose(visemes_to_weights(phones, 360, rig), whole, atol=1e-6)


def test_close_lips_closes_any_pose(rig):
    from blendtalk.speech.visemes import close_lips, lip_seam_gaps

    w = np.random.default_rng(0).uniform(0, 0.6, (200, 52))
    closed = close_lips(w, rig)
    assert (closed @ lip_seam_gaps(rig).T).max() <= 1e-9  # every lip-seam pair, not just the mean
    assert rig.lip_gap(rig(closed.astype(np.float32))).max() < 1e-6
    assert closed.min() >= 0 and closed.max() <= 1
    jaw = rig.index("jawOpen")
    np.testing.assert_array_equal(closed[:, jaw], w[:, jaw])  # the jaw may stay open behind closed lips


def test_seal_bilabials_closes_open_bilabial_frames_and_eases_their_neighbours(rig):
    from blendtalk.speech.phones import PHONE_INDEX
    from blendtalk.speech.visemes import SEAL_GAP, seal_bilabials

    jaw = rig.displacement(rig.weights({"jawOpen": 0.5, "mouthSmileLeft": 0.4}))  # (V, 3): lips apart
    gap = rig.lip_gap(rig.vertices + jaw)
    assert gap > 3 * MM
    # a vowel, an open /b/, a closed /m/, a vowel, a /p/ already under the seal, a vowel
    d_s = np.stack([jaw, jaw, 0.0 * jaw, jaw, jaw * (0.5 * SEAL_GAP / gap), jaw]).astype(np.float32)
    ids = np.array([PHONE_INDEX[p] for p in ("aa", "b", "m", "aa", "p", "aa")])
    sealed = seal_bilabials(d_s, ids, rig)
    alpha = SEAL_GAP / gap
    assert rig.lip_gap(rig.vertices + sealed[1]) == pytest.approx(SEAL_GAP, rel=1e-3)  # the open /b/: brought to the seal
    np.testing.assert_allclose(sealed[1], alpha * d_s[1], rtol=1e-5)  # one scale of the whole frame: its shape is kept
    np.testing.assert_allclose(sealed[0], (1 + alpha) / 2 * d_s[0], rtol=1e-5)  # the frame before goes half way
    np.testing.assert_array_equal(sealed[2:], d_s[2:])  # closed already, or under the seal: nothing moves
    assert seal_bilabials(d_s, np.zeros(6, np.int64), rig) is d_s  # no bilabial: nothing copied
