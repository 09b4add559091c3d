"""The live prior pooled over voices (blendtalk.live.prior): the shipped file loads with the right
shapes, pooling is what it says, a missing or bad file falls back to the ARCTIC sentence with a
warning, and the builder gives the same file twice on a tiny input."""

import json
import logging

import numpy as np
import pytest

from blendtalk.live.prior import (PRIOR_PATH, VoiceStats, format_cmn, load_prior, parse_cmn, pool, read_prior,
                                  voice_stats)
from blendtalk.live.session import default_prior
from blendtalk.live.speech_stream import SpeechPrior


def test_the_shipped_prior_loads_with_the_right_shapes():
    prior = load_prior()
    assert isinstance(prior, SpeechPrior)
    assert prior.mel_mean.shape == (80,) and prior.mel_std.shape == (80,)
    assert np.isfinite(prior.mel_mean).all() and (prior.mel_std > 0).all()
    assert parse_cmn(prior.cepstral_mean).shape == (13,)
    doc, voices = read_prior()
    assert len(voices) >= 2 and "arctic_a0009" in [v.name for v in voices]
    assert doc["recipe"]["command"].startswith("python tools/build_live_prior.py")
    again = pool(voices, doc["spread"])  # the stored pool is the pool of the stored voices
    np.testing.assert_allclose(again.mel_mean, prior.mel_mean, rtol=1e-5)
    np.testing.assert_allclose(again.mel_std, prior.mel_std, rtol=1e-5)
    np.testing.assert_allclose(parse_cmn(again.cepstral_mean), parse_cmn(prior.cepstral_mean), rtol=1e-4, atol=1e-4)


def test_default_prior_is_the_shipped_pool():
    a, b = default_prior(), load_prior(PRIOR_PATH)
    np.testing.assert_array_equal(a.mel_mean, b.mel_mean)
    assert a.cepstral_mean == b.cepstral_mean


def _voice(name, mean, var, cmn, voice=""):
    return VoiceStats(name, "test", 1.0, np.full(80, mean), np.full(80, var), np.full(13, cmn), voice)


def test_pool_weighs_voices_equally_and_the_spreads_differ_by_the_means_spread():
    voices = [_voice("a", -8.0, 4.0, 50.0), _voice("b", -6.0, 1.0, 60.0)]
    within, total = pool(voices, "within"), pool(voices, "total")
    np.testing.assert_allclose(within.mel_mean, -7.0)
    np.testing.assert_allclose(within.mel_std, np.sqrt(2.5))  # mean of the variances
    np.testing.assert_allclose(total.mel_std, np.sqrt(2.5 + 1.0))  # + the variance of the means
    np.testing.assert_allclose(parse_cmn(within.cepstral_mean), 55.0)
    with pytest.raises(ValueError, match="spread"):
        pool(voices, "frames")


def test_a_voice_can_be_left_out_of_the_pool(tmp_path):
    from blendtalk.live.prior import save_prior

    path = tmp_path / "prior.json"
    save_prior(path, [_voice("a", -8.0, 4.0, 50.0, "en-us"), _voice("b", -6.0, 1.0, 60.0, "en")], "within", {})
    np.testing.assert_allclose(load_prior(path).mel_mean, -7.0, rtol=1e-6)
    np.testing.assert_allclose(load_prior(path, exclude={"en-us"}).mel_mean, -6.0)
    with pytest.raises(ValueError, match="no voice left"):
        load_prior(path, exclude={"a", "b"})


def test_cmn_strings_round_trip_and_bad_ones_are_named():
    text = "55.7884,1.92055,5.12041,6.73914,-6.76943,-0.0548147,-3.79977,0.362129,4.37041,3.05766,0.146703,4.69652,5.59746"
    assert format_cmn(parse_cmn(text)) == text
    with pytest.raises(ValueError, match="13"):
        parse_cmn("1,2,3")
    with pytest.raises(ValueError, match="comma-separated"):
        parse_cmn("1;2")


@pytest.mark.parametrize("content", [None, "not json", '{"format": "other"}', "bad shape"])
def test_a_missing_or_bad_prior_falls_back_to_the_arctic_sentence_with_a_warning(tmp_path, caplog, content):
    path = tmp_path / "prior.json"
    if content == "bad shape":
        doc = json.loads(PRIOR_PATH.read_text())
        doc["pooled"]["mel_std"] = doc["pooled"]["mel_std"][:40]
        content = json.dumps(doc)
    if content is not None:
        path.write_text(content)
    with pytest.raises((OSError, ValueError)):
        load_prior(path)
    with caplog.at_level(logging.WARNING, logger="blendtalk.live.session"):
        prior = default_prior(path)
    assert "ARCTIC" in caplog.text and str(path) in caplog.text
    from blendtalk.constants import ASSETS_DIR
    from blendtalk.live.speech_stream import speech_prior
    from blendtalk.speech.audio import load_audio

    arctic = speech_prior(load_audio(ASSETS_DIR / "audio" / "arctic_a0009.wav"))
    np.testing.assert_array_equal(prior.mel_mean, arctic.mel_mean)
    assert prior.cepstral_mean == arctic.cepstral_mean


def test_voice_stats_measure_the_audio():
    rng = np.random.default_rng(0)
    loud, quiet = (rng.normal(0, s, 8000).astype(np.float32) for s in (0.1, 0.01))
    a, b = voice_stats("loud", [loud]), voice_stats("quiet", [quiet])
    assert a.mel_mean.shape == (80,) and a.mel_var.shape == (80,) and a.cepstral_mean.shape == (13,)
    assert a.mel_mean.mean() > b.mel_mean.mean() + 3  # 20 dB louder: log power up by about 4.6
    with pytest.raises(ValueError, match="0.1 s"):
        voice_stats("short", [loud[:100]])


def test_the_builder_gives_the_same_file_twice_on_a_tiny_input(tmp_path):
    """One recording only (no eSpeak: its output varies a little from call to call)."""
    import soundfile as sf

    from tools.build_live_prior import main

    rng = np.random.default_rng(1)
    t = np.arange(8000) / 16000
    wav = tmp_path / "tiny.wav"
    sf.write(wav, (0.2 * np.sin(2 * np.pi * 220 * t) + rng.normal(0, 0.01, t.size)).astype(np.float32), 16000,
             subtype="PCM_16")
    outs = [tmp_path / "a.json", tmp_path / "b.json"]
    for out in outs:
        assert main(["--out", str(out), "--recordings", str(wav), "--voices"]) == 0
    docs = [json.loads(out.read_text()) for out in outs]
    for doc, out in zip(docs, outs):
        assert doc["recipe"].pop("command").endswith(f"--out {out} --recordings {wav} --voices")
    assert docs[0] == docs[1]
    doc, voices = read_prior(outs[0])
    assert [v.name for v in voices] == ["tiny"] and doc["recipe"]["recordings"] == ["tiny.wav"]
    with pytest.raises(SystemExit):  # an existing file is kept unless --force
        main(["--out", str(outs[0]), "--recordings", str(wav), "--voices"])
