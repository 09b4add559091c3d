"""Lip-sync metrics: pure functions on hand-made gaps, the ARCTIC fixture with good and broken drivers, the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from blendtalk.evaluation.lipsync import (
    VOWEL_OPENNESS, bilabial_closure, lip_jitter, lipsync_report, openness_correlation, phone_frames, silence_closure,
)
from blendtalk.speech.phones import Phone
from blendtalk.speech.phonetics import load_arctic_fixture
from blendtalk.speech.visemes import VisemeDriver

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fixture():
    audio, phones, transcript = load_arctic_fixture()
    return audio, phones, transcript


def test_phone_frames_cover_short_phones_and_clip():
    assert phone_frames(Phone("p", 0.105, 0.115), 100).tolist() == [3]  # 10 ms stop still owns a frame
    assert phone_frames(Phone("sil", 0.0, 0.1), 100).tolist() == [0, 1, 2, 3]
    assert phone_frames(Phone("sil", 3.0, 4.0), 95).tolist() == list(range(90, 95))


def test_pure_metrics_on_hand_made_gaps():
    fps, t = 30, 60
    phones = [Phone("sil", 0.0, 0.5), Phone("m", 0.5, 0.6), Phone("aa", 0.6, 0.9), Phone("b", 0.9, 1.0),
              Phone("iy", 1.0, 1.3), Phone("sil", 1.3, 2.0)]
    gap = np.full(t, 5e-3)
    gap[:13] = gap[16:18] = gap[43:] = 0.0  # closed in the pauses and for /m/, open through /b/
    assert bilabial_closure(gap, phones, fps) == {"bilabial_closure": 0.5, "bilabials": 2}
    s = silence_closure(gap, phones, fps)
    assert s["silence_closure"] == 1.0 and s["silence_closed_frames"] == 1.0 and s["silences"] == 2
    assert np.isnan(silence_closure(gap, phones, fps, min_silence=1.0)["silence_closure"])
    vowels = [Phone(v, 0.1 * i, 0.1 * (i + 1)) for i, v in enumerate(VOWEL_OPENNESS)]
    gap = np.repeat([VOWEL_OPENNESS[v.symbol] * 1e-2 for v in vowels], 3)
    o = openness_correlation(gap, vowels, fps)
    assert o["openness_r"] > 0.9 and o["vowels"] == len(vowels)  # neighbours' half-frames blur it a little
    closed = openness_correlation(np.zeros_like(gap), vowels, fps)
    assert np.isnan(closed["openness_r"]) and closed["vowel_opening"] == 0.0
    line = np.linspace(0, 1, 20)[:, None, None] * np.ones((20, 4, 3))
    assert lip_jitter(line) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match=r"\(T,\)"):
        bilabial_closure(np.zeros((3, 2)), phones)
    with pytest.raises(ValueError, match=r"\(\.\.\., T, L, 3\)"):
        lip_jitter(np.zeros((5, 3)))


def test_procedural_driver_scores_well_on_arctic(rig, fixture):
    audio, phones, _ = fixture
    t = int(round(len(audio) / 16000 * 30))
    r = lipsync_report(rig.vertices + VisemeDriver(rig)(phones, t)[1], rig, phones)
    assert r["bilabials"] == 2 and r["bilabial_closure"] == 1.0
    assert r["silence_closure"] == 1.0 and r["vowel_opening"] == 1.0
    assert r["jitter_m_s2"] < 2.0 and r["mean_gap_mm"] > 2.0


def test_broken_drivers_score_badly(rig, fixture):
    audio, phones, _ = fixture
    t = int(round(len(audio) / 16000 * 30))
    good = lipsync_report(rig.vertices + VisemeDriver(rig)(phones, t)[1], rig, phones)
    frozen = lipsync_report(np.repeat(rig.vertices[None], t, 0), rig, phones)  # a mouth that never moves
    assert frozen["vowel_opening"] == 0.0 and np.isnan(frozen["openness_r"])
    w = np.zeros((t, rig.num_blendshapes), np.float32)
    w[:, rig.index("jawOpen")] = np.random.default_rng(0).uniform(0.2, 0.8, t)  # a random jaw
    jaw = lipsync_report(rig(w), rig, phones)
    assert jaw["bilabial_closure"] == 0.0 and jaw["silence_closure"] == 0.0
    assert jaw["jitter_m_s2"] > 5 * good["jitter_m_s2"]  # 4.9 vs 0.67 m/s^2


@pytest.mark.slow
def test_cli_on_the_fixture_with_a_transcript(tmp_path, fixture):
    _, _, transcript = fixture
    out = tmp_path / "ls.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "eval" / "lipsync.py"), str(ROOT / "assets/audio/arctic_a0009.wav"),
                           "--transcript", transcript, "--driver", "visemes", "--json", str(out)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-1500:]
    report = json.loads(out.read_text())  # strict JSON: undefined metrics are null, not NaN
    assert report["phone_source"] == "aligned" and report["bilabial_closure"] == 1.0
    assert report["units"]["jitter_m_s2"].startswith("m/s^2")


def test_text_path_gives_exact_phones_and_features():
    from blendtalk.speech.features import text_features

    speech = text_features("Bob made a map.")
    assert speech.phone_source == "exact" and speech.features.shape == (speech.num_frames, 120)
    symbols = [p.symbol for p in speech.phones]
    assert symbols.count("b") >= 2 and "m" in symbols
    assert (speech.features[:, :40].sum(1) == 1).all()


@pytest.mark.slow
def test_cli_with_a_faceformer_checkpoint(tmp_path, rig):
    from blendtalk.models.audio_encoders import AudioEncoderConfig
    from blendtalk.models.faceformer import FaceFormer, FaceFormerConfig

    config = FaceFormerConfig(num_vertices=rig.num_vertices, feature_dim=16, num_heads=2, num_speakers=2,
                              encoder=AudioEncoderConfig(hidden_dim=16, conv_layers=1))
    FaceFormer(config).save_pretrained(tmp_path / "ckpt")  # untrained: the mouth never moves
    out = tmp_path / "ff.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "eval" / "lipsync.py"), str(ROOT / "assets/audio/arctic_a0009.wav"),
                           "--driver", "faceformer", "--checkpoint", str(tmp_path / "ckpt"), "--device", "cpu",
                           "--json", str(out)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-1500:]
    report = json.loads(out.read_text())
    assert report["phone_source"] == "recognized" and report["vowel_opening"] == 0.0 and report["openness_r"] is None


@pytest.mark.slow
def test_shipped_speech_model_closes_on_real_speech(tmp_path, fixture):
    """The issue's target as a regression check: the ARCTIC clip said three times with pauses of its
    own room tone; the shipped FaceFormer closes the lips at >= 90% of /p b m/ and of pauses."""
    _, _, transcript = fixture
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for words in (transcript, None):
        out = tmp_path / f"ls_{words is None}.json"
        cmd = [sys.executable, str(ROOT / "eval" / "lipsync.py"), str(ROOT / "assets/audio/arctic_a0009.wav"),
               "--driver", "faceformer", "--checkpoint", str(ROOT / "assets" / "speech"), "--device", "cpu",
               "--repeat", "3", "--pause", "0.5", "--json", str(out)] + (["--transcript", words] if words else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr[-1500:]
        report = json.loads(out.read_text())
        assert report["bilabials"] == 6 and report["silences"] == 2 and report["repeat"] == 3
        assert report["bilabial_closure"] >= 0.9 and report["silence_closure"] >= 0.9, report


def test_cli_repeat_checks_its_arguments(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for extra in (["--repeat", "0"], ["--repeat", "2", "--pause", "9"],
                  ["--repeat", "2", "--phones", str(ROOT / "assets/audio/arctic_a0009.phones.txt")]):
        proc = subprocess.run([sys.executable, str(ROOT / "eval" / "lipsync.py"), str(ROOT / "assets/audio/arctic_a0009.wav"),
                               "--json", str(tmp_path / "x.json"), *extra], capture_output=True, text=True, env=env)
        assert proc.returncode == 2 and ("--repeat" in proc.stderr or "--phones" in proc.stderr), proc.stderr[-500:]
    assert not (tmp_path / "x.json").exists()


@pytest.mark.slow
def test_the_lips_still_close_in_hiss(tmp_path, word_lm):
    """White noise at 30 dB SNR fills the closure of ARCTIC's /p/ and /b/ with hiss; allphone
    recognition heard /f v/ there and the lips stayed apart (0/2). The words keep them (2/2)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = tmp_path / "noise.json"
    cmd = [sys.executable, str(ROOT / "eval" / "lipsync.py"), str(ROOT / "assets/audio/arctic_a0009.wav"),
           "--driver", "faceformer", "--device", "cpu", "--white-noise-db", "30",
           "--phones", str(ROOT / "assets/audio/arctic_a0009.phones.txt"), "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-1500:]
    report = json.loads(out.read_text())
    assert report["white_noise_snr_db"] == 30 and report["bilabials"] == 2 and report["bilabial_closure"] == 1.0, report
    bad = subprocess.run(cmd[:-2] + ["--white-noise-db", "-3", "--json", str(tmp_path / "bad.json")], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "--white-noise-db" in bad.stderr and not (tmp_path / "bad.json").exists()
