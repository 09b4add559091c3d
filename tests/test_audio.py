"""Audio loading, validation, resampling and log-mel features."""

import struct
import subprocess

import numpy as np
import pytest
import soundfile as sf

from blendtalk.speech.audio import (
    MIN_SECONDS,
    AudioError,
    RunningDc,
    load_audio,
    log_mel,
    mel_filters,
    num_frames,
    remove_dc,
    resample,
)
from blendtalk.constants import FPS, SAMPLE_RATE
from blendtalk.speech.phonetics import ARCTIC_DIR

ARCTIC_WAV = ARCTIC_DIR / "arctic_a0009.wav"


def _speechlike(seconds: float, sr: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Amplitude-modulated noise at about -20 dBFS: (S,) or (S, C) float32."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    x = (0.15 * env[:, None] * rng.standard_normal((n, channels))).astype(np.float32)
    return x[:, 0] if channels == 1 else x


def _wav_header(sr: int, data_bytes: int, channels: int = 1) -> bytes:
    """A 16-bit PCM WAV header declaring `data_bytes` of samples (whatever follows it)."""
    block = 2 * channels
    return (
        b"RIFF" + struct.pack("<I", (36 + data_bytes) & 0xFFFFFFFF) + b"WAVE"
        + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, sr, sr * block, block, 16)
        + b"data" + struct.pack("<I", data_bytes & 0xFFFFFFFF)
    )


def test_loads_shipped_fixture():
    audio = load_audio(ARCTIC_WAV)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert audio.shape[0] == sf.info(str(ARCTIC_WAV)).frames  # already 16 kHz mono: unchanged length


def test_resampling_and_mono_keep_duration(tmp_path):
    path = tmp_path / "stereo44k.wav"
    sf.write(str(path), _speechlike(1.5, 44_100, channels=2), 44_100, subtype="PCM_16")
    audio = load_audio(path)
    assert audio.ndim == 1
    assert abs(audio.shape[0] - 1.5 * SAMPLE_RATE) <= 1
    # Arrays: same rule, and the mono mix is the channel mean.
    x = _speechlike(0.8, 22_050, channels=2)
    y = load_audio(x, sample_rate=22_050)
    assert abs(y.shape[0] - 0.8 * SAMPLE_RATE) <= 1
    same = load_audio(x, sample_rate=SAMPLE_RATE)
    np.testing.assert_allclose(same, remove_dc(x.mean(axis=1)), atol=1e-7)


def test_int16_array_scaled():
    x = (_speechlike(0.5, SAMPLE_RATE) * 32767).astype(np.int16)
    np.testing.assert_allclose(load_audio(x, sample_rate=SAMPLE_RATE), remove_dc(x / 32768.0), atol=1e-6)


@pytest.mark.parametrize("suffix", [".mp3", ".m4a"])
def test_ffmpeg_formats(tmp_path, suffix):
    import imageio_ffmpeg

    out = tmp_path / f"clip{suffix}"
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(ARCTIC_WAV), "-ar", "44100", str(out)]
    subprocess.run(cmd, check=True, capture_output=True)
    audio = load_audio(out)
    # Encoders add some priming/padding samples; the duration stays within 0.1 s.
    assert abs(audio.shape[0] / SAMPLE_RATE - sf.info(str(ARCTIC_WAV)).duration) < 0.1


def _write_bad(tmp_path, case: str):
    path = tmp_path / f"{case}.wav"
    rng = np.random.default_rng(0)
    if case == "random_bytes":
        path.write_bytes(rng.bytes(4000))
    elif case == "truncated":
        sf.write(str(path), _speechlike(1.0, SAMPLE_RATE), SAMPLE_RATE, subtype="PCM_16")
        path.write_bytes(path.read_bytes()[:30])  # cut inside the header
    elif case == "text":
        path.write_text("this is not audio\n" * 50)
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "nan":
        x = _speechlike(0.5, SAMPLE_RATE)
        x[100] = np.nan
        sf.write(str(path), x, SAMPLE_RATE, subtype="FLOAT")
    elif case == "silent":
        sf.write(str(path), np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE, subtype="PCM_16")
    elif case == "short":
        sf.write(str(path), _speechlike(0.1, SAMPLE_RATE), SAMPLE_RATE, subtype="PCM_16")
    elif case == "clipped":
        sf.write(str(path), np.clip(_speechlike(1.0, SAMPLE_RATE) * 20, -1, 1), SAMPLE_RATE, subtype="PCM_16")
    elif case == "hours":
        # 3 h at 1 Hz: a tiny file whose header duration is far over the cap. Decoding and
        # resampling it to 16 kHz would need 170 M samples; the header check refuses it first.
        n = 3 * 3600
        path.write_bytes(_wav_header(1, 2 * n) + rng.integers(-3000, 3000, n, dtype=np.int16).tobytes())
    elif case == "no_samples":
        path.write_bytes(_wav_header(SAMPLE_RATE, 0))
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("random_bytes", "Could not read"),
        ("truncated", "Could not read"),
        ("text", "Could not read"),
        ("empty", "empty"),
        ("nan", "NaN"),
        ("silent", "silent"),
        ("short", f"at least {MIN_SECONDS} s"),
        ("clipped", "clipped"),
        ("hours", "at most 120 s"),
        ("no_samples", "no audio samples"),
    ],
)
def test_bad_files_raise_clear_errors(tmp_path, case, message):
    path = _write_bad(tmp_path, case)
    with pytest.raises(AudioError, match=message):
        load_audio(path)


def test_header_overclaiming_data_reads_only_what_is_there(tmp_path):
    # The data chunk claims ~4 GiB (37 h at 16 kHz) but 1 s follows: read 1 s, allocate no more.
    path = tmp_path / "liar.wav"
    samples = (_speechlike(1.0, SAMPLE_RATE) * 32767).astype("<i2")
    path.write_bytes(_wav_header(SAMPLE_RATE, 0xFFFFFF00) + samples.tobytes())
    assert load_audio(path).shape == (SAMPLE_RATE,)


def test_other_bad_sources(tmp_path):
    with pytest.raises(AudioError, match="not found"):
        load_audio(tmp_path / "missing.wav")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(AudioError, match="Unsupported audio format '.txt'"):
        load_audio(tmp_path / "notes.txt")
    (tmp_path / "noise.mp3").write_bytes(b"\x00" * 3000)
    with pytest.raises(AudioError, match="ffmpeg"):
        load_audio(tmp_path / "noise.mp3")
    x = _speechlike(0.5, SAMPLE_RATE)
    with pytest.raises(AudioError, match="sample_rate"):
        load_audio(x)
    with pytest.raises(AudioError, match="transpose"):
        load_audio(np.stack([x, x]), sample_rate=SAMPLE_RATE)  # (C, S) instead of (S, C)
    with pytest.raises(AudioError, match="at most 2 s"):
        load_audio(_speechlike(3.0, SAMPLE_RATE), sample_rate=SAMPLE_RATE, max_seconds=2.0)
    with pytest.raises(AudioError, match=r"\[-1, 1\]"):
        load_audio(x * 30000, sample_rate=SAMPLE_RATE)  # int16 values passed as float


def test_float_audio_over_full_scale_is_scaled_not_refused(tmp_path):
    """A decoded MP3 or a float WAV may peak a little over 1: it loads scaled to peak at 1, its shape kept."""
    x = _speechlike(1.0, SAMPLE_RATE)
    loud = 1.3 * x / np.abs(x).max()
    path = tmp_path / "float.wav"
    sf.write(str(path), loud, SAMPLE_RATE, subtype="FLOAT")
    for audio in (load_audio(path), load_audio(loud, sample_rate=SAMPLE_RATE)):
        np.testing.assert_allclose(audio, remove_dc(loud / 1.3), atol=1e-6)
    with pytest.raises(AudioError, match="NaN"):
        load_audio(np.full(SAMPLE_RATE, np.inf, np.float32), sample_rate=SAMPLE_RATE)


def test_num_frames_rounding():
    assert num_frames(0) == 0
    assert num_frames(SAMPLE_RATE) == FPS
    # 1 frame = 533.33 samples; halves round up, just below rounds down.
    assert num_frames(266) == 0 and num_frames(267) == 1
    assert num_frames(int(2.5 * SAMPLE_RATE / FPS)) == 2  # 1333 samples = 2.499 frames
    for s in range(0, 50_000, 997):
        assert num_frames(s) == int(np.floor(s * FPS / SAMPLE_RATE + 0.5))


@pytest.mark.parametrize("seconds", [0.2, 1.0, 3.095, 7.31])
def test_log_mel_frames(seconds):
    audio = _speechlike(seconds, SAMPLE_RATE)
    mel = log_mel(audio, n_mels=40)
    assert mel.shape == (num_frames(audio.shape[0]), 40)
    assert mel.dtype == np.float32 and np.isfinite(mel).all()


def test_log_mel_tracks_loudness():
    # Silence then noise: the features of the noisy half are far above those of the silent half.
    x = np.concatenate([np.zeros(SAMPLE_RATE, np.float32), _speechlike(1.0, SAMPLE_RATE)])
    mel = log_mel(x)
    assert mel[5:25].mean() + 5 < mel[35:55].mean()
    with pytest.raises(ValueError, match=r"\(S,\)"):
        log_mel(np.zeros((2, 100), np.float32))


@pytest.mark.parametrize("n_mels", [40, 80, 128])
def test_mel_filters_match_librosa(n_mels):
    """The numpy filter bank is librosa's default (Slaney scale and area normalisation), which the
    shipped speech model was trained with."""
    librosa = pytest.importorskip("librosa")
    ours = mel_filters(n_mels)
    ref = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=512, n_mels=n_mels, fmin=20.0, fmax=SAMPLE_RATE / 2)
    assert ours.shape == ref.shape and np.abs(ours - ref).max() <= 1e-6


@pytest.mark.parametrize("rate", [8_000, 22_050, 44_100, 48_000])
def test_resample_matches_librosa_soxr_hq(rate):
    """Direct libsoxr gives librosa's "soxr_hq" result, length included, so features are unchanged."""
    librosa = pytest.importorskip("librosa")
    x = _speechlike(1.37, rate)
    ref = librosa.resample(x, orig_sr=rate, target_sr=SAMPLE_RATE, res_type="soxr_hq")
    ours = resample(x, rate)
    assert ours.shape == ref.shape and np.abs(ours - ref).max() <= 1e-6


def test_arctic_features_unchanged_by_the_numpy_front_end(monkeypatch):
    """Log-mel of the ARCTIC clip with the numpy filter bank equals the one built on librosa's bank."""
    librosa = pytest.importorskip("librosa")
    import blendtalk.speech.audio

    audio = load_audio(ARCTIC_WAV)
    ours = log_mel(audio)
    monkeypatch.setattr(blendtalk.speech.audio, "mel_filters", lambda n_mels: librosa.filters.mel(
        sr=SAMPLE_RATE, n_fft=512, n_mels=n_mels, fmin=20.0, fmax=SAMPLE_RATE / 2))
    ref = log_mel(audio)
    assert ours.shape == ref.shape == (num_frames(len(audio)), 80)
    assert np.abs(ours - ref).max() <= 1e-4


def test_a_dc_offset_is_taken_off_and_is_no_sound():
    """A cheap converter's DC offset is no sound: loading takes it off (it leaks into the speech
    model's lowest mel bands), and an offset alone is silence."""
    x = _speechlike(1.0, SAMPLE_RATE)
    clean = load_audio(x, sample_rate=SAMPLE_RATE)
    np.testing.assert_allclose(load_audio(x + 0.05, sample_rate=SAMPLE_RATE), clean, atol=1e-6)
    assert abs(float(clean.mean())) < 1e-6
    np.testing.assert_allclose(log_mel(load_audio(x + 0.02, sample_rate=SAMPLE_RATE)), log_mel(clean), atol=1e-3)
    hum = np.full(SAMPLE_RATE, 0.05, np.float32) + 1e-5 * np.random.default_rng(1).standard_normal(SAMPLE_RATE).astype(np.float32)
    with pytest.raises(AudioError, match="silent"):
        load_audio(hum, sample_rate=SAMPLE_RATE)


def test_a_running_dc_offset_settles_without_steps():
    """A live session's chunks lose a steady offset as a loaded file does, without a step between chunks."""
    x = _speechlike(3.0, SAMPLE_RATE) + 0.05
    running = RunningDc()
    out = np.concatenate([running(x[i : i + 320]) for i in range(0, len(x), 320)])
    settled = SAMPLE_RATE // 2
    np.testing.assert_allclose(out[settled:], remove_dc(x)[settled:], atol=5e-3)
    assert running.level == pytest.approx(0.05, abs=5e-3)
    assert np.abs(np.diff(out)).max() <= np.abs(np.diff(x)).max() + 1e-3  # no click where chunks meet
    first = RunningDc()
    np.testing.assert_array_equal(first(x[:320]), x[:320])  # nothing to estimate from yet
    cut = RunningDc()
    np.testing.assert_array_equal(np.concatenate([cut(x[i : i + 777]) for i in range(0, len(x), 777)]), out)


def test_log_mel_of_a_quieter_recording_is_the_same_up_to_a_shift():
    """The floor before the log follows the clip's level, so the same speech recorded 15 dB quieter (or
    louder) shifts every band of every frame alike, which the speech model's normalisation takes out;
    a fixed floor swallowed the quiet copy's weak bands."""
    x = np.concatenate([np.zeros(SAMPLE_RATE // 4, np.float32), _speechlike(1.0, SAMPLE_RATE)])
    for gain in (10 ** (-15 / 20), 10 ** (6 / 20)):
        shift = log_mel(x * np.float32(gain)) - log_mel(x)
        np.testing.assert_allclose(shift, 2 * np.log(gain), atol=1e-3)


def test_a_stream_floor_starts_at_the_reference_level_and_moves_to_the_microphones():
    from blendtalk.speech.audio import LEVEL_MEMORY, LEVEL_PRIOR, LOG_MEL_FLOOR, level_floor, mel_floor

    assert level_floor(np.zeros(0)) == pytest.approx(LOG_MEL_FLOOR)  # nothing heard: a speaker's usual level
    quiet = 1e-4  # -40 dBFS
    halfway = level_floor(np.full(LEVEL_PRIOR // 2, quiet))
    assert mel_floor(quiet) < halfway < LOG_MEL_FLOOR
    assert level_floor(np.full(LEVEL_MEMORY, quiet)) == pytest.approx(mel_floor(quiet))


def test_mains_hum_and_rumble_are_taken_off_and_clean_audio_is_left_alone():
    """Stationary hum (50 or 60 Hz and its harmonics) and rumble below 20 Hz sit in the lowest mel
    bands, which the speech model reads: loading cuts them where a clip has them, and returns a clip
    without them as it was."""
    from blendtalk.speech.audio import remove_hum

    x = load_audio(ARCTIC_WAV)
    assert remove_hum(x) is x
    t = np.arange(len(x)) / SAMPLE_RATE
    clean = log_mel(x)
    for noise in (0.005 * np.sin(2 * np.pi * 60 * t) + 0.0025 * np.sin(2 * np.pi * 180 * t), 0.05 * np.sin(2 * np.pi * 7 * t)):
        noisy = (x + noise).astype(np.float32)
        before = np.abs(log_mel(noisy)[:, :3] - clean[:, :3]).mean()
        after = np.abs(log_mel(load_audio(noisy, sample_rate=SAMPLE_RATE))[:, :3] - clean[:, :3]).mean()
        assert after < before / 3, (before, after)


def test_a_live_stream_loses_steady_hum_however_it_is_chunked():
    """After its first second, a stream's steady mains hum is subtracted (fitted on the last second,
    continued in time); a stream without hum passes as it came; any chunking gives the same samples."""
    from blendtalk.speech.audio import RunningHum

    x = np.tile(load_audio(ARCTIC_WAV), 2)
    t = np.arange(len(x)) / SAMPLE_RATE
    hum = (0.005 * np.sin(2 * np.pi * 50 * t + 0.3) + 0.0025 * np.sin(2 * np.pi * 150 * t)).astype(np.float32)

    def stream(audio, chunk):
        running = RunningHum()
        return np.concatenate([running(audio[i : i + chunk]) for i in range(0, len(audio), chunk)])

    out = stream(x + hum, 320)
    settled = 3 * SAMPLE_RATE // 2
    assert np.sqrt(np.mean((out - x)[settled:] ** 2)) < 0.5 * np.sqrt(np.mean(hum[settled:] ** 2))
    np.testing.assert_array_equal(stream(x + hum, 777), out)
    np.testing.assert_array_equal(stream(x, 320), x)
