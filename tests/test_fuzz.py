"""Fuzzing every input boundary with hypothesis: audio decoding, emotion text fields and the CLI,
TTS text, checkpoint folders, exports.

Every case must end in a correct result or in one of the project's clear errors (AudioError,
ValueError, FileNotFoundError, CheckpointError): never another exception type, a hang (each call
runs under an alarm) or a large allocation (tracemalloc peaks, process RSS growth). Examples are
derandomized, so CI sees the same cases every run; `pytest -s tests/test_fuzz.py` prints how many
cases each boundary tried (the table in docs/RELIABILITY.md).

Slow-to-make inputs are made once per module: valid wav/flac/ogg/mp3 files (soundfile, the ffmpeg of
imageio-ffmpeg), copies of the shipped checkpoints, tiny checkpoints, an eSpeak NG engine.
"""

import collections
import contextlib
import io
import json
import math
import os
import pickle
import resource
import shutil
import signal
import string
import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from blendtalk.expression import emotions
from blendtalk.animation import Animation
from blendtalk.speech.audio import (
    FFMPEG_SUFFIXES,
    MAX_DECODED_SAMPLES,
    MAX_SECONDS,
    MIN_SECONDS,
    SOUNDFILE_SUFFIXES,
    AudioError,
    load_audio,
)
from blendtalk.cli import main
from blendtalk.constants import ASSETS_DIR, SAMPLE_RATE
from blendtalk.expression.emotions import EMOTIONS, MAX_INTENSITY, parse_timeline, timeline_weights
from blendtalk.render.exports import (
    FORMATS,
    LIVE_LINK_FACE_NAMES,
    export_all,
    write_arkit_csv,
    write_glb,
    write_npy,
    write_obj_zip,
)
from blendtalk.face.geometry import load_square_map
from blendtalk.hub import CheckpointError, validate_checkpoint
from blendtalk.models.audio_encoders import AudioEncoderConfig
from blendtalk.models.dfm import DeformationFusionModule, DFMConfig
from blendtalk.models.dfm import check_pretrained as check_dfm
from blendtalk.models.faceformer import FaceFormer, FaceFormerConfig
from blendtalk.models.faceformer import check_pretrained as check_speech
from blendtalk.pipeline import Pipeline, expression_weights
from blendtalk.request import MAX_TEXT_CHARS, Expression
from blendtalk.face.rig import load_rig

WAV = ASSETS_DIR / "audio" / "arctic_a0009.wav"
CALL_SECONDS = 20.0  # s: any single call running longer than this is a hang (the slowest legitimate one takes < 2 s)
MAX_TRACED_MB = 64.0  # MB of Python/numpy allocations allowed where a huge header must be refused without reading
MAX_RSS_GROWTH_MB = 1024.0  # MB: a test that grows the process by more has allocated what an input claimed
PROJECT_ERRORS = (AudioError, ValueError, FileNotFoundError, CheckpointError)


def fuzz(examples: int):
    """Deterministic hypothesis settings: CI runs the same `examples` cases every time, with no deadline
    per example (hangs are caught by `bounded`) and no example database written into the repo."""
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


def mostly(good, bad):
    """Draws from `good` three times in four: enough valid inputs reach the code behind the checks."""
    return st.sampled_from([good, good, good, bad]).flatmap(lambda strategy: strategy)  # one_of would merge the copies


class Hang(AssertionError):
    """A call ran past CALL_SECONDS."""


@contextlib.contextmanager
def bounded(seconds: float = CALL_SECONDS, max_traced_mb: float | None = None):
    """Fail with Hang when the block runs longer than `seconds` (SIGALRM); with `max_traced_mb`, fail
    when its Python/numpy allocations peak above that many MB (tracemalloc)."""
    def alarm(signum, frame):
        raise Hang(f"call ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    if max_traced_mb is not None:
        tracemalloc.start()
    try:
        yield
        if max_traced_mb is not None:
            peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
            assert peak_mb < max_traced_mb, f"allocated {peak_mb:.0f} MB (limit {max_traced_mb:g} MB)"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if max_traced_mb is not None:
            tracemalloc.stop()


def clear(err: BaseException) -> None:
    """A clear error: one of the project's types, with a message."""
    assert isinstance(err, PROJECT_ERRORS), f"{type(err).__name__}: {err}"
    assert str(err).strip(), f"{type(err).__name__} without a message"


class Tally:
    """Cases tried per boundary, and how many of them ended in a result ('ok') rather than an error."""

    def __init__(self):
        self.tried, self.ok = collections.Counter(), collections.Counter()

    def add(self, boundary: str, outcome: str = "refused") -> None:
        self.tried[boundary] += 1
        self.ok[boundary] += outcome == "ok"

    def table(self) -> str:
        width = max(map(len, self.tried), default=8)
        rows = [f"  {'boundary':<{width}}  {'cases':>6}  {'results':>7}  {'errors':>6}"]
        rows += [f"  {b:<{width}}  {n:6d}  {self.ok[b]:7d}  {n - self.ok[b]:6d}" for b, n in sorted(self.tried.items())]
        total, ok = sum(self.tried.values()), sum(self.ok.values())
        return "\n".join(rows + [f"  {'total':<{width}}  {total:6d}  {ok:7d}  {total - ok:6d}"])


@pytest.fixture(scope="module")
def tally():
    """Cases per boundary; the table is printed at the end of the module (visible with -s)."""
    counts = Tally()
    yield counts
    print("\n\nfuzz cases per boundary (hypothesis examples + fixed cases; results = correct output, "
          "errors = clear refusal):\n" + counts.table())


@pytest.fixture(autouse=True)
def bounded_memory():
    """Every test: the process may not grow by more than MAX_RSS_GROWTH_MB (a claimed size was allocated)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB -> MB on Linux
    yield
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    assert grown < MAX_RSS_GROWTH_MB, f"the process grew by {grown:.0f} MB"


# =============================================================================================
# 1. Audio decoding


def speechlike(seconds: float = 1.0, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A voiced-sounding test signal (S,) float32: harmonics under a 4 Hz syllable envelope."""
    t = np.arange(int(seconds * sr)) / sr
    x = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((140, 280, 420, 700), 1))
    return (0.2 * x * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory) -> dict[str, bytes]:
    """Valid 1 s clips as bytes, one per format: wav and flac and ogg (soundfile), mp3 (ffmpeg)."""
    import imageio_ffmpeg

    folder = tmp_path_factory.mktemp("audio")
    x = speechlike()
    for suffix, subtype in ((".wav", "PCM_16"), (".flac", "PCM_16"), (".ogg", "VORBIS")):
        sf.write(folder / f"clip{suffix}", x, SAMPLE_RATE, subtype=subtype)
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", str(folder / "clip.wav"),
                    "-b:a", "32k", str(folder / "clip.mp3")], check=True)
    return {p.suffix: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A folder for files written per example (hypothesis cannot use function-scoped tmp_path)."""
    return tmp_path_factory.mktemp("scratch")


def check_audio(path_or_array, **kwargs) -> str:
    """load_audio under bounds; a result must be valid 16 kHz mono speech. Returns 'ok' or 'refused'."""
    try:
        with bounded():
            y = load_audio(path_or_array, **kwargs)
    except Hang:
        raise
    except Exception as err:  # anything but a clear error fails below
        clear(err)
        return "refused"
    assert y.dtype == np.float32 and y.ndim == 1 and y.flags.c_contiguous
    assert np.isfinite(y).all()
    max_seconds = kwargs.get("max_seconds", MAX_SECONDS)
    assert MIN_SECONDS * SAMPLE_RATE * 0.9 <= len(y) <= (max_seconds + 1.0) * SAMPLE_RATE
    return "ok"


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


@fuzz(80)
@given(data=st.binary(max_size=4096), suffix=st.sampled_from(SOUNDFILE_SUFFIXES + FFMPEG_SUFFIXES[:4]))
def test_random_bytes_are_refused(data, suffix, scratch, tally):
    tally.add("audio: random bytes", check_audio(write(scratch, f"random{suffix}", data)))


@st.composite
def damaged(draw, audio_files):
    """(suffix, bytes): a valid file truncated, with bytes overwritten, or both."""
    suffix = draw(st.sampled_from(sorted(audio_files)))
    data = bytearray(audio_files[suffix])
    if draw(st.booleans()):  # overwrite bytes, mostly in the header where parsers decide sizes
        for _ in range(draw(st.integers(1, 8))):
            pos = draw(st.one_of(st.integers(0, min(64, len(data) - 1)), st.integers(0, len(data) - 1)))
            data[pos] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return suffix, bytes(data)


@fuzz(120)
@given(data=st.data())
def test_truncated_or_corrupt_files(data, audio_files, scratch, tally):
    suffix, content = data.draw(damaged(audio_files))
    tally.add(f"audio: damaged {suffix[1:]}", check_audio(write(scratch, f"damaged{suffix}", content)))


def wav_bytes(samples: bytes, rate: int, channels: int = 1, bits: int = 16, fmt: int = 1,
              data_size: int | None = None, riff_size: int | None = None) -> bytes:
    """A RIFF/WAVE file whose header fields may lie (data_size, riff_size) about `samples`."""
    data_size = len(samples) if data_size is None else data_size
    riff_size = 36 + data_size if riff_size is None else riff_size
    block = channels * bits // 8
    return (struct.pack("<4sI4s", b"RIFF", riff_size & 0xFFFFFFFF, b"WAVE")
            + struct.pack("<4sIHHIIHH", b"fmt ", 16, fmt & 0xFFFF, channels & 0xFFFF, rate & 0xFFFFFFFF,
                          (rate * block) & 0xFFFFFFFF, block & 0xFFFF, bits & 0xFFFF)
            + struct.pack("<4sI", b"data", data_size & 0xFFFFFFFF) + samples)


u32 = st.integers(0, 2**32 - 1)


@fuzz(100)
@given(rate=mostly(st.sampled_from([8_000, 16_000, 44_100]),
                  st.one_of(st.sampled_from([0, 1, 7, 3_999, 384_001, 4_000_000_000, 2**32 - 1]), u32)),
       channels=mostly(st.just(1), st.one_of(st.sampled_from([0, 2, 8, 65535]), st.integers(0, 65535))),
       bits=mostly(st.just(16), st.sampled_from([0, 1, 8, 24, 32, 64, 65535])),
       fmt=mostly(st.just(1), st.sampled_from([0, 3, 6, 7, 0xFFFE, 0xFFFF])),
       data_size=mostly(st.none(), u32), riff_size=mostly(st.none(), u32))
def test_wav_header_fields(rate, channels, bits, fmt, data_size, riff_size, scratch, tally):
    """Sample rates from 0 Hz to 4 GHz, absurd channel counts and bit depths, sizes that lie: a clear
    error or a valid result, fast and without allocating what the header claims."""
    body = (speechlike(0.5) * 32767).astype("<i2").tobytes()
    path = write(scratch, "header.wav", wav_bytes(body, rate, channels, bits, fmt, data_size, riff_size))
    try:
        with bounded(max_traced_mb=MAX_TRACED_MB):
            y = load_audio(path)
    except AudioError as err:
        clear(err)
        tally.add("audio: wav header fields")
        return
    assert y.dtype == np.float32 and y.ndim == 1 and np.isfinite(y).all()
    tally.add("audio: wav header fields", "ok")


@fuzz(12)
@given(rate=st.sampled_from([1, 7, 100, 3_999, 384_001, 4_000_000_000]),
       frames=st.integers(1, 2 * SAMPLE_RATE))
def test_extreme_array_sample_rates_are_refused(rate, frames, tally):
    tally.add("audio: array sample rates")
    with pytest.raises(AudioError, match="sample rate|s long"):  # 16,000 samples at 1 Hz are first of all too long
        load_audio(speechlike(1.0)[:frames], sample_rate=rate)


def test_wav_claiming_hours_is_read_only_as_far_as_it_goes(scratch, tally):
    """A data chunk claiming 2**32 - 1 bytes (~37 h at 16 kHz) over 1 s of samples: the decode reads
    only what is there, quickly and without allocating the claimed size."""
    tally.add("audio: huge size claims", "ok")
    body = (speechlike(1.0) * 32767).astype("<i2").tobytes()
    path = write(scratch, "hours.wav", wav_bytes(body, SAMPLE_RATE, data_size=2**32 - 1, riff_size=2**32 - 1))
    start = time.perf_counter()
    with bounded(max_traced_mb=MAX_TRACED_MB):
        y = load_audio(path)
    assert len(y) == SAMPLE_RATE and time.perf_counter() - start < 2.0


def flac_claiming(frames: int, rate: int, channels: int, clip: bytes) -> bytes:
    """A FLAC whose STREAMINFO says `frames` frames at `rate` Hz x `channels` (the clip's own audio follows)."""
    data = bytearray(clip)
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO is the first metadata block
    packed = int.from_bytes(data[18:26], "big")  # 20 bits rate, 3 bits channels - 1, 5 bits bits - 1, 36 bits frames
    bits_minus_1 = (packed >> 36) & 0x1F
    packed = (rate << 44) | ((channels - 1) << 41) | (bits_minus_1 << 36) | frames
    data[18:26] = packed.to_bytes(8, "big")
    return bytes(data)


@pytest.mark.parametrize("frames, rate, channels, message", [
    (10 * 3600 * 48_000, 48_000, 2, "long"),  # ten hours: refused by duration
    (120 * 96_000, 96_000, 8, "samples in all"),  # 120 s x 8 channels at 96 kHz: 368 MB as float32 (regression)
    (16_000, 655_350, 1, "sample rate"),  # FLAC's largest rate (regression: was accepted and resampled)
])
def test_flac_header_claims_are_refused_before_decoding(frames, rate, channels, message, audio_files, scratch, tally):
    """A compressed file can expand far beyond its size (a FLAC of silence): the header's claim is
    judged before anything is decoded, so nothing of the claimed size is allocated."""
    tally.add("audio: huge size claims")
    path = write(scratch, "claims.flac", flac_claiming(frames, rate, channels, audio_files[".flac"]))
    assert sf.info(str(path)).frames == frames  # libsndfile believes the header
    start = time.perf_counter()
    with bounded(max_traced_mb=MAX_TRACED_MB), pytest.raises(AudioError, match=message):
        load_audio(path)
    assert time.perf_counter() - start < 1.0
    assert frames * channels > MAX_DECODED_SAMPLES or message != "samples in all"


@fuzz(150)
@given(dtype=mostly(st.sampled_from([np.float32, np.float64, np.int16, np.int32]),
                    st.sampled_from([np.float16, np.int8, np.uint8, np.int64, np.complex64, np.bool_, np.object_])),
       shape=mostly(st.tuples(st.integers(4_000, 12_000), st.integers(1, 3)).map(lambda t: t[:1] if t[1] == 3 else t),
                    st.one_of(st.tuples(st.integers(0, 5_000)), st.tuples(st.integers(0, 5_000), st.integers(0, 20)),
                              hnp.array_shapes(min_dims=0, max_dims=3, max_side=4))),
       scale=mostly(st.floats(0.05, 0.9), st.sampled_from([0.0, 1e-4, 1.0, 1.5, np.nan, np.inf, -np.inf])),
       rate=mostly(st.sampled_from([8_000, 16_000, 22_050.0, np.int64(16_000)]),
                   st.one_of(st.integers(-1, 400_000), st.sampled_from([0.5, 16_000.5, np.nan, np.inf, True]),
                             st.none(), st.text(max_size=5))))
def test_arrays(dtype, shape, scale, rate, tally):
    """Any dtype and shape, NaN/inf/silent/clipped samples, any sample rate: valid audio or AudioError."""
    with np.errstate(all="ignore"):
        x = np.sin(np.arange(math.prod(shape), dtype=np.float64) * 0.3).reshape(shape) * scale
        if np.issubdtype(dtype, np.integer):
            x = x * np.iinfo(dtype).max
        tally.add("audio: arrays", check_audio(x.astype(dtype), sample_rate=rate))


@pytest.mark.parametrize("max_seconds", [float("nan"), float("inf"), -1.0, 0.0, MIN_SECONDS, "60"])
def test_max_seconds_must_be_finite(max_seconds):
    """Regression: max_seconds=nan used to switch the length cap off (every comparison with NaN is False)."""
    with pytest.raises(ValueError, match="max_seconds"):
        load_audio(speechlike(), sample_rate=SAMPLE_RATE, max_seconds=max_seconds)


@pytest.mark.parametrize("make, message", [
    (lambda d: d, "not a file"),  # a directory
    (lambda d: write(d, "empty.wav", b""), "empty"),
    (lambda d: write(d, "words.wav", b"RIFF is a word in this text file\n" * 20), "Could not read"),
    (lambda d: write(d, "words.mp3", "not an mp3, only text\n".encode() * 20), "no audio stream"),
    (lambda d: d / "missing.flac", "not found"),
    (lambda d: d / ("x" * 300 + ".wav"), "Cannot open"),  # regression: OSError (File name too long)
    (lambda d: d / "nul\0byte.wav", "not found"),
    (lambda d: write(d, "clip.xyz", b"abc"), "Unsupported audio format"),
    (lambda d: (d / "loop.wav").symlink_to(d / "loop.wav") or d / "loop.wav", "not found"),
    (lambda d: os.mkfifo(d / "fifo.wav") or d / "fifo.wav", "not a file"),  # a reader would block forever
])
def test_paths_that_are_not_audio(make, message, tmp_path, tally):
    tally.add("audio: not-audio paths")
    with bounded(5.0), pytest.raises(AudioError, match=message):
        load_audio(make(tmp_path))


def test_ffmpeg_never_reads_a_file_name_as_a_protocol(audio_files, tmp_path, monkeypatch):
    """Regression: ffmpeg took 'concat:nope.mp3' as its concat protocol (and 'pipe:0.mp3' as stdin);
    the name is now always a file (`file:` prefix, file-only protocol whitelist)."""
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "concat:nope.mp3", audio_files[".mp3"])
    assert len(load_audio("concat:nope.mp3")) > 0.9 * SAMPLE_RATE


# =============================================================================================
# 2. Emotion timelines, expressions, CLI arguments, TTS text

VALID_NAMES = st.sampled_from(EMOTIONS + tuple(emotions.ALIASES) + ("HAPPY", " sad "))
NAMES = st.one_of(st.sampled_from(EMOTIONS + tuple(emotions.ALIASES)), st.sampled_from(["HAPPY", " sad ", "Joy", ""]),
                  st.text(max_size=12))
NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10**30).map(str),
                    st.sampled_from(["nan", "inf", "-0", "1e309", "0x10", "1_000", "", " ", "٣", "1.5.2"]))


@st.composite
def timelines(draw) -> str:
    """Timeline text: NAME@SECONDS[:INTENSITY] tokens, about half of them well formed (known names,
    rising times) with a rare fuzzed part, the rest with fuzzed names and numbers; or any text."""
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return draw(st.text(max_size=60))
    tokens, start = [], 0.0
    for _ in range(draw(st.integers(0 if kind == 1 else 1, 6))):
        if kind >= 3:  # well formed
            start += draw(st.floats(0.001, 5.0))
            name, when = draw(st.sampled_from(EMOTIONS + tuple(emotions.ALIASES))), f"{start:.3f}"
            level = draw(st.one_of(st.none(), st.floats(0, MAX_INTENSITY).map(lambda v: f"{v:.3g}")))
            if draw(st.integers(0, 9)) == 0:
                name, when, level = draw(st.sampled_from([(draw(NAMES), when, level), (name, str(draw(NUMBERS)), level),
                                                           (name, when, str(draw(NUMBERS)))]))
        else:
            name, when = draw(NAMES), str(draw(NUMBERS))
            level = str(draw(NUMBERS)) if draw(st.booleans()) else None
        tok = f"{name}@{when}" + (f":{level}" if level is not None else "")
        if draw(st.integers(0, 19)) == 0:
            tok = tok.replace(draw(st.sampled_from("@:")), draw(st.sampled_from(["", "@@", "::", "@:", " "])), 1)
        tokens.append(tok)
    return draw(st.sampled_from([" ", ",", ";", " , ", "\n", "\t"])).join(tokens)


ANY_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(), st.text(max_size=8), st.just([1.0]))


def check_keys(keys) -> None:
    """The parser's promise: known emotions, finite starts >= 0 rising strictly, intensities in [0, 1.5]."""
    assert keys and all(k.emotion in EMOTIONS for k in keys)
    starts = [k.start for k in keys]
    assert all(math.isfinite(s) and s >= 0 for s in starts) and starts == sorted(set(starts))
    assert all(0 <= k.intensity <= MAX_INTENSITY for k in keys)


@fuzz(400)
@given(text=timelines())
def test_timeline_parser(text, tally):
    try:
        with bounded():
            keys = parse_timeline(text)
    except Exception as err:
        clear(err)
        tally.add("text: timeline parser")
        return
    check_keys(keys)
    tally.add("text: timeline parser", "ok")


@st.composite
def keyframe_lists(draw) -> list:
    """(emotion, start[, intensity]) tuples: mostly valid (rising starts), else fuzzed values, or junk."""
    if draw(st.integers(0, 5)) == 0:
        return draw(st.lists(st.one_of(st.none(), st.integers(), st.text(max_size=3), st.tuples()), max_size=3))
    keys, start = [], 0.0
    for _ in range(draw(st.integers(1, 4))):
        start += draw(st.floats(0.01, 3.0))
        key = (draw(mostly(VALID_NAMES, NAMES)), draw(mostly(st.just(start), st.one_of(ANY_VALUE, st.floats()))))
        if draw(st.booleans()):
            key += (draw(mostly(st.floats(0, 1), st.one_of(ANY_VALUE, st.floats()))),)
        keys.append(key)
    return keys


@fuzz(150)
@given(keys=keyframe_lists(), frames=mostly(st.integers(1, 300), st.one_of(st.integers(-2, 0), st.floats(), st.none())),
       intensity=mostly(st.floats(0, 1.5), ANY_VALUE),
       transition=mostly(st.floats(0, 2), st.one_of(ANY_VALUE, st.floats())),
       fps=mostly(st.sampled_from([30, 25.0, 60]),
                  st.one_of(st.floats(), st.sampled_from([0, -30, 1e-300]), ANY_VALUE)))
def test_timeline_weights(keys, frames, intensity, transition, fps, tally):
    """Timeline weights from tuples with any values, any frame count, fps and transition: finite (T, 52)
    weights in [0, 1.5] or a ValueError (regression: None/str numbers gave TypeError, fps=0 gave NaN)."""
    try:
        with bounded(), np.errstate(all="raise"):
            w = timeline_weights(keys, frames, intensity=intensity, transition=transition, fps=fps)
    except Exception as err:
        clear(err)
        tally.add("text: timeline weights")
        return
    assert w.shape == (frames, len(emotions.ARKIT_NAMES)) and w.dtype == np.float32
    assert np.isfinite(w).all() and w.min() >= 0 and w.max() <= MAX_INTENSITY + 1e-6
    tally.add("text: timeline weights", "ok")


@fuzz(250)
@given(emotion=mostly(VALID_NAMES, st.one_of(NAMES, ANY_VALUE)),
       intensity=mostly(st.floats(0, 1.5), st.one_of(st.floats(), ANY_VALUE)),
       mix_with=mostly(st.one_of(st.none(), VALID_NAMES), st.one_of(NAMES, ANY_VALUE)),
       mix_ratio=mostly(st.floats(0, 1), st.one_of(st.floats(), ANY_VALUE)),
       timeline=mostly(st.one_of(st.none(), st.none(), timelines()), ANY_VALUE), frames=st.integers(1, 90))
def test_expression(emotion, intensity, mix_with, mix_ratio, timeline, frames, tally):
    """Expression accepts exactly the valid combinations; a valid one gives finite weights (T, 52)."""
    try:
        with bounded():
            expr = Expression(emotion, intensity, mix_with, mix_ratio, timeline)
    except Exception as err:
        clear(err)
        tally.add("text: Expression")
        return
    assert expr.emotion in EMOTIONS and 0 <= expr.intensity <= MAX_INTENSITY
    assert expr.mix_with is None or (expr.mix_with in EMOTIONS and 0 <= expr.mix_ratio <= 1)
    with bounded():
        w = expression_weights(expr, frames)
    assert w.shape == (frames, len(emotions.ARKIT_NAMES)) and np.isfinite(w).all()
    tally.add("text: Expression", "ok")


class Reached(Exception):
    """Raised by the stand-in for Pipeline.from_pretrained: every input was accepted."""


@pytest.fixture(scope="module")
def cli_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


ARG = st.one_of(st.text(max_size=20), NUMBERS.map(str), NAMES, timelines())


@fuzz(80)
@given(emotion=mostly(VALID_NAMES, ARG), intensity=mostly(st.floats(0, 1.5).map(str), NUMBERS.map(str)),
       mix=mostly(st.one_of(st.none(), VALID_NAMES), ARG), mix_ratio=mostly(st.floats(0, 1).map(str), NUMBERS.map(str)),
       timeline=mostly(st.one_of(st.none(), st.none(), timelines()), ARG))
def test_cli_animate_arguments(emotion, intensity, mix, mix_ratio, timeline, cli_folder, tally):
    """`blendtalk animate` with fuzzed --emotion/--intensity/--mix/--mix-ratio/--timeline: exit code 2
    with one line (or argparse's usage error), nothing written; or every input accepted, with the
    same values that Expression accepts, and only then a model would load."""
    argv = ["animate", str(WAV), f"--emotion={emotion}", f"--intensity={intensity}", f"--mix-ratio={mix_ratio}",
            "-o", str(cli_folder / "clip.mp4"), "--quiet"]
    argv += [f"--mix={mix}"] if mix is not None else []
    argv += [f"--timeline={timeline}"] if timeline is not None else []
    stderr = io.StringIO()

    def refuse(*args, **kwargs):
        raise Reached

    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(stderr), bounded():
        mp.setattr(Pipeline, "from_pretrained", refuse)
        try:
            rc = main(argv)
        except SystemExit as exit_:  # argparse: a value it cannot convert (e.g. --intensity=abc)
            rc = exit_.code
            assert stderr.getvalue().strip().splitlines()[-1].startswith("blendtalk animate: error: ")
        except Reached:
            rc = None
            Expression(emotion, float(intensity), mix, float(mix_ratio), timeline)  # the same values are valid here
        else:
            lines = stderr.getvalue().strip().splitlines()
            assert rc == 2 and len(lines) == 1 and lines[0].startswith("blendtalk: error: "), stderr.getvalue()
    assert rc in (2, None)
    assert list(cli_folder.iterdir()) == []  # nothing written, not even a temporary file
    tally.add("text: CLI animate arguments", "ok" if rc is None else "refused")


@pytest.fixture(scope="module")
def tts():
    from blendtalk.speech.tts import EspeakTTS

    return EspeakTTS()


TTS_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=40),
    st.text(alphabet=st.sampled_from(string.ascii_letters + string.punctuation + "\0\a\b\x1b\x7f\u200b\u202e\ufeff"
                                     "éßø中文🙂\U0001F600<>&;[[]]\ud800\udfff"), max_size=60),
    st.lists(st.sampled_from(["hello", "<speak>", "</voice>", "[[h@'loU]]", "&amp;", "\x00", "123456789", "$%&"]),
             max_size=8).map(" ".join),
)


@fuzz(60)
@given(text=TTS_TEXT)
def test_tts_text(text, tts, tally):
    """eSpeak NG on any unicode (control characters, lone surrogates, markup, emoji): a ValueError, or
    finite 16 kHz audio with phones covering it."""
    try:
        with bounded():
            audio, phones = tts.synthesize(text)
    except Exception as err:
        clear(err)
        tally.add("text: TTS")
        return
    assert audio.dtype == np.float32 and audio.ndim == 1 and len(audio) > 0 and np.isfinite(audio).all()
    assert phones and phones[0].start == 0 and abs(phones[-1].end - len(audio) / SAMPLE_RATE) < 1e-3
    tally.add("text: TTS", "ok")


@pytest.mark.parametrize("text", ["word " * (MAX_TEXT_CHARS // 5 + 1), "x" * 1_000_000, " \n\t ", ""])
def test_long_or_empty_text_is_refused_before_synthesis(text, tally):
    """The text boundary (Pipeline.speech_input, the CLI) refuses a megabyte of text at once."""
    tally.add("text: TTS")
    pipe = Pipeline(rig=load_rig())
    with bounded(1.0), pytest.raises(ValueError, match="characters|empty"):
        pipe.speech_input(text=text)


# =============================================================================================
# 3. Checkpoint folders

DFM_CONFIG = json.loads((ASSETS_DIR / "dfm" / "config.json").read_text())
SPEECH_CONFIG = json.loads((ASSETS_DIR / "speech" / "config.json").read_text())
JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=6)),
                    lambda inner: st.one_of(st.lists(inner, max_size=4),
                                            st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                    max_leaves=12)
HUGE = st.sampled_from([10**9, 2**31, 2**40, 10**30, 2**63, -(10**9), 0.5, 1e308, float("inf"), float("nan"), True,
                        "1"])  # sizes that would allocate or overflow, and values of the wrong type


def checkpoint_outcome(fn, folder) -> str:
    """Run a loader on a folder under bounds: 'ok' or 'refused' (clear errors only)."""
    try:
        with bounded():
            fn(folder)
    except Hang:
        raise
    except Exception as err:
        clear(err)
        return "refused"
    return "ok"


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> dict[str, Path]:
    """Copies of assets/dfm and assets/speech (~15 MB each), made once: tests mutate folders linking to them."""
    root = tmp_path_factory.mktemp("shipped")
    return {kind: Path(shutil.copytree(ASSETS_DIR / kind, root / kind)) for kind in ("dfm", "speech")}


def tiny_checkpoints(root: Path) -> dict[str, Path]:
    """A tiny DFM (geometric map off) and a tiny FaceFormer, saved with save_pretrained (KB each)."""
    torch.manual_seed(0)
    DeformationFusionModule(DFMConfig(num_vertices=10, num_blendshapes=2, use_geometric_map=False,
                                      mlp_hidden=(8,))).save_pretrained(root / "dfm")
    speech = FaceFormerConfig(num_vertices=10, feature_dim=8, num_heads=2, num_speakers=2,
                              encoder=AudioEncoderConfig(hidden_dim=8, conv_layers=1))
    FaceFormer(speech).save_pretrained(root / "speech")
    return {"dfm": root / "dfm", "speech": root / "speech"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return tiny_checkpoints(tmp_path_factory.mktemp("tiny"))


def folder_with(scratch: Path, weights: Path, config: str | bytes | None) -> Path:
    """A fresh folder holding `config` as config.json (None: none) and a hard link to `weights`."""
    folder = scratch / "ckpt"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    os.link(weights, folder / "model.safetensors")
    if config is not None:
        data = config.encode("utf-8", "surrogatepass") if isinstance(config, str) else config
        (folder / "config.json").write_bytes(data)
    return folder


def load_model(kind: str, folder: Path) -> torch.nn.Module:
    """from_pretrained of either kind; a DFM with a geometric map gets the rig's map of its size."""
    if kind == "speech":
        return FaceFormer.from_pretrained(folder)
    config = check_dfm(folder)
    smap = load_square_map(load_rig(), config.map_size).matrix() if config.use_geometric_map else None
    return DeformationFusionModule.from_pretrained(folder, smap)


def hub_check(kind: str | None) -> callable:
    """blendtalk.hub.validate_checkpoint, whose only error is CheckpointError (the fallback logic catches that)."""
    def run(folder: Path):
        try:
            return validate_checkpoint(folder, kind)
        except CheckpointError:
            raise
        except Exception as err:
            raise AssertionError(f"validate_checkpoint raised {type(err).__name__}: {err}") from err
    return run


LOADERS = {"dfm": (check_dfm, hub_check("dfm")), "speech": (check_speech, hub_check("speech"))}


@st.composite
def mutated_config(draw, base: dict) -> str:
    """config.json text: the shipped config with fields replaced by fuzzed JSON / huge numbers, added or
    removed; nested encoder fields too; or a random JSON document; or not JSON at all."""
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return json.dumps(draw(JSON))
    if choice == 1:
        return draw(st.sampled_from(["", "{", "[" * 100_000 + "]" * 100_000, '{"num_vertices": 1' + "0" * 5000 + "}",
                                     "\ufeff{}", "\udcff", "null", '{"a": NaN}', "{}"]))
    config = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 3))):
        target = config
        if "encoder" in config and draw(st.booleans()):
            target = config["encoder"] if isinstance(config["encoder"], dict) else config
        key = draw(st.sampled_from(sorted(target) + ["unknown_field"]))
        action = draw(st.integers(0, 4))
        if action == 0:
            target.pop(key, None)
        elif action in (1, 2):
            target[key] = draw(HUGE)
        else:
            target[key] = draw(JSON)
    return json.dumps(config, allow_nan=True)


@pytest.mark.parametrize("kind", ["dfm", "speech"])
@fuzz(70)
@given(data=st.data())
@pytest.mark.slow
def test_fuzzed_config_on_shipped_weights(kind, data, shipped, scratch, tally):
    """config.json mutated next to the shipped weights: the meta-device check (loading.py) and the Hub
    validation refuse it clearly, fast, without allocating what it describes (num_vertices=10**9 ...)."""
    base = DFM_CONFIG if kind == "dfm" else SPEECH_CONFIG
    text = data.draw(mutated_config(base))
    folder = folder_with(scratch, shipped[kind] / "model.safetensors", text)
    outcomes = {checkpoint_outcome(fn, folder) for fn in LOADERS[kind]}
    assert len(outcomes) == 1, f"loading and hub disagree on {text[:300]!r}"
    if outcomes == {"ok"}:  # accepted: it must describe these weights exactly, and load
        with bounded():
            load_model(kind, folder)
    tally.add(f"checkpoint: config.json ({kind})", outcomes.pop())


@pytest.mark.parametrize("kind, field, value", [
    ("speech", "num_layers", 100_000),  # regression: built 100k decoder layers on the meta device (minutes)
    ("speech", "num_heads", 2**28),  # with feature_dim 2**28: regression, a Python list of 2**28 ALiBi slopes (GBs)
    ("speech", "encoder.conv_layers", 1_000_000),  # regression: a million conv blocks
    ("dfm", "channels", [8] * 50_000),  # regression: 50k conv blocks (over a minute)
    ("dfm", "num_vertices", 10**9),
    ("dfm", "num_blendshapes", 2**40),
    ("speech", "num_vertices", 10**12),
    ("speech", "num_heads", True),  # regression: a bool was taken as 1 head and loaded
    ("dfm", "chunk_size", 1.5),  # regression: a float chunk size passed and crashed at run time
    ("dfm", "init_scale", float("nan")),
    ("speech", "encoder.dropout", "0.1"),
])
def test_config_numbers_that_would_hang_or_allocate(kind, field, value, shipped, scratch, tally):
    tally.add(f"checkpoint: config.json ({kind})")
    config = json.loads(json.dumps(DFM_CONFIG if kind == "dfm" else SPEECH_CONFIG))
    target, _, name = field.rpartition(".")
    (config[target] if target else config)[name] = value
    if field == "num_heads" and value != True:  # noqa: E712 - a bool on purpose
        config["feature_dim"] = value
    folder = folder_with(scratch, shipped[kind] / "model.safetensors", json.dumps(config))
    for fn in (*LOADERS[kind], (DeformationFusionModule if kind == "dfm" else FaceFormer).from_pretrained):
        # The regressions ran for minutes; the slowest honest refusal (50k channels, parsed under
        # tracemalloc) took 3.6 s with five other processes on 2 cores, so 20 s leaves 5x room.
        with bounded(20.0, max_traced_mb=MAX_TRACED_MB), pytest.raises((ValueError, CheckpointError)):
            fn(folder)


def safetensors_parts(path: Path) -> tuple[dict, bytes]:
    """(header JSON, tensor bytes) of a safetensors file."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def safetensors_bytes(header: bytes, body: bytes, length: int | None = None) -> bytes:
    return struct.pack("<Q", len(header) if length is None else length) + header + body


@st.composite
def mutated_header(draw, header: dict) -> bytes:
    """Header bytes with fuzzed dtypes, shapes, offsets, names or metadata, or raw garbage."""
    if draw(st.integers(0, 5)) == 0:
        return draw(st.binary(max_size=256))
    header = json.loads(json.dumps(header))
    names = sorted(k for k in header if k != "__metadata__")
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(names))
        entry, what = header[name], draw(st.sampled_from(["dtype", "shape", "data_offsets", "name", "metadata"]))
        if what == "dtype":
            entry["dtype"] = draw(st.sampled_from(["F64", "I8", "BOOL", "F8_E4M3", "X9", "", 7]))
        elif what == "shape":
            entry["shape"] = draw(st.lists(st.one_of(HUGE, st.integers(0, 2**20)), max_size=4))
        elif what == "data_offsets":
            entry["data_offsets"] = draw(st.lists(st.one_of(HUGE, st.integers(-1, 2**26)), max_size=3))
        elif what == "name":
            header[draw(st.text(max_size=10))] = header.pop(name)
            names = sorted(k for k in header if k != "__metadata__")
        else:
            header["__metadata__"] = draw(JSON)
    return json.dumps(header).encode()


@pytest.mark.parametrize("kind", ["dfm", "speech"])
@fuzz(25)
@given(data=st.data())
def test_fuzzed_safetensors_header_on_shipped_weights(kind, data, shipped, scratch, tally):
    """Only the header of the shipped model.safetensors is fuzzed (the 15 MB of tensors stay as they are)."""
    header, body = safetensors_parts(shipped[kind] / "model.safetensors")
    new = data.draw(mutated_header(header))
    length = data.draw(st.one_of(st.none(), st.sampled_from([0, 7, 2**40, 2**64 - 1]), st.integers(0, 2**20)))
    weights = write(scratch, "fuzzed.safetensors", safetensors_bytes(new, body, length))
    folder = folder_with(scratch, weights, json.dumps(DFM_CONFIG if kind == "dfm" else SPEECH_CONFIG))
    outcomes = {checkpoint_outcome(fn, folder) for fn in LOADERS[kind]}
    assert len(outcomes) == 1, f"loading and hub disagree on header {new[:300]!r}"
    tally.add(f"checkpoint: safetensors header ({kind})", outcomes.pop())


@pytest.mark.parametrize("kind", ["dfm", "speech"])
@fuzz(60)
@given(data=st.data())
def test_truncated_or_bit_flipped_weights(kind, data, tiny, scratch, tally):
    """A tiny checkpoint's model.safetensors truncated or bit-flipped anywhere: loads strictly (a flip
    inside a tensor's bytes changes only values) or refuses clearly."""
    raw = bytearray((tiny[kind] / "model.safetensors").read_bytes())
    for _ in range(data.draw(st.integers(0, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] ^= 1 << data.draw(st.integers(0, 7))
    if data.draw(st.booleans()):
        raw = raw[:data.draw(st.integers(0, len(raw)))]
    weights = write(scratch, "damaged.safetensors", bytes(raw))
    folder = folder_with(scratch, weights, (tiny[kind] / "config.json").read_text())
    model_cls = DeformationFusionModule if kind == "dfm" else FaceFormer
    outcomes = [checkpoint_outcome(fn, folder) for fn in (*LOADERS[kind], model_cls.from_pretrained)]
    tally.add(f"checkpoint: damaged weights ({kind})", "ok" if outcomes == ["ok"] * 3 else "refused")


class PlantedCode:
    """Unpickling this creates `marker`: the proof that a pickle ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickles_are_never_unpickled(tiny, tmp_path, tally):
    """A plain pickle or a torch.save'd file whose unpickling creates a marker file, planted as
    model.safetensors or as pytorch_model.bin (with and without real weights beside it): never run."""
    marker = tmp_path / "PWNED"
    plain = pickle.dumps({"weight": PlantedCode(marker)})
    torch.save({"weight": torch.zeros(3), "x": PlantedCode(marker)}, tmp_path / "saved.pt")
    assert not marker.exists()
    cases = []
    for kind in ("dfm", "speech"):
        config = (tiny[kind] / "config.json").read_text()
        for payload in (plain, (tmp_path / "saved.pt").read_bytes()):
            a = tmp_path / f"{kind}-as-safetensors-{len(cases)}"
            a.mkdir()
            (a / "config.json").write_text(config)
            (a / "model.safetensors").write_bytes(payload)
            b = tmp_path / f"{kind}-bin-only-{len(cases)}"
            b.mkdir()
            (b / "config.json").write_text(config)
            (b / "pytorch_model.bin").write_bytes(payload)
            c = Path(shutil.copytree(tiny[kind], tmp_path / f"{kind}-bin-beside-{len(cases)}"))
            (c / "pytorch_model.bin").write_bytes(payload)
            cases += [(kind, a, False), (kind, b, False), (kind, c, True)]
    for kind, folder, loads in cases:
        tally.add("checkpoint: planted pickles", "ok" if loads else "refused")
        model_cls = DeformationFusionModule if kind == "dfm" else FaceFormer
        for fn in (*LOADERS[kind], model_cls.from_pretrained, hub_check(None)):
            assert checkpoint_outcome(fn, folder) == ("ok" if loads else "refused"), (fn, folder.name)
            assert not marker.exists(), f"a pickle ran while loading {folder.name}"


@pytest.mark.parametrize("remove", ["config.json", "model.safetensors", "both", "folder"])
def test_missing_files(remove, tiny, tmp_path, tally):
    tally.add("checkpoint: missing files")
    folder = Path(shutil.copytree(tiny["dfm"], tmp_path / "dfm"))
    if remove == "folder":
        shutil.rmtree(folder)
    for name in (["config.json", "model.safetensors"] if remove == "both" else [remove]):
        (folder / name).unlink(missing_ok=True)
    for fn in (*LOADERS["dfm"], DeformationFusionModule.from_pretrained):
        with pytest.raises((FileNotFoundError, CheckpointError)):
            fn(folder)


# =============================================================================================
# 4. Exports


def animation(frames: int = 3, vertices: np.ndarray | None = None, fps: float = 30.0) -> Animation:
    """A tetrahedron animated over `frames` frames, with 52 ARKit curves."""
    base = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    tri = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]])
    verts = base + 0.01 * np.arange(frames, dtype=np.float32)[:, None, None] if vertices is None else vertices
    names = tuple(n[0].lower() + n[1:] for n in LIVE_LINK_FACE_NAMES)
    return Animation(verts, tri, np.zeros(1600, np.float32), fps=fps,
                     arkit_weights=np.full((len(verts), 52), 0.5, np.float32), arkit_names=names)


STEMS = st.one_of(
    st.text(max_size=80),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,70}", fullmatch=True),  # around the 64-character limit
    st.sampled_from(["../../x", "..", ".", "", "/etc/passwd", "/tmp/abs", "a/b", "a\\b", "a\0b", "x" * 64, "x" * 65,
                     "x" * 300, "-rf", "animation", "CON", "a:b", "~", "$HOME", "\u202eevil", "a\nb", " a"]),
    st.text(alphabet=st.sampled_from("./\\\0~-_aZ9 "), max_size=12),
)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    """out/ inside an otherwise empty folder: anything written next to out/ escaped it."""
    root = tmp_path_factory.mktemp("sandbox")
    (root / "out").mkdir()
    return root


@fuzz(150)
@given(stem=STEMS, formats=st.lists(st.sampled_from(FORMATS), min_size=1, max_size=3, unique=True))
def test_export_names_never_leave_out_dir(stem, formats, sandbox, tally):
    """export_all with fuzzed stems: files only inside out/ (none beside it, none anywhere absolute)."""
    out = sandbox / "out"
    anim = animation()
    try:
        with bounded():
            written = export_all(anim, out, formats=formats, stem=stem)
    except Exception as err:
        clear(err)
        written = {}
    assert all(p.parent == out and p.is_file() for p in written.values())
    assert [p.name for p in sandbox.iterdir()] == ["out"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written.values())  # no temporaries
    for p in written.values():
        p.unlink()
    assert not Path("/tmp/abs_arkit.csv").exists() and not Path("/tmp/abs.npy").exists()
    tally.add("exports: stems", "ok" if written else "refused")


WRITERS = {".npy": write_npy, ".zip": write_obj_zip, ".csv": write_arkit_csv, ".glb": write_glb}


@fuzz(80)
@given(name=STEMS, suffix=st.sampled_from(sorted(WRITERS)))
def test_writers_with_fuzzed_file_names(name, suffix, sandbox, tally):
    """The writers with a fuzzed file name inside out/: the named file and nothing else, or a clear
    error (regression: a long valid name failed with OSError: the temporary name was 19 chars longer)."""
    out = sandbox / "out"
    assume("/" not in name and "\\" not in name and name not in (".", ".."))
    path = out / f"{name}{suffix}"
    try:
        with bounded():
            written = WRITERS[suffix](animation(), path)
    except Exception as err:
        clear(err)
        written = None
    names = [p.name for p in out.iterdir()]
    assert names == ([] if written is None else [path.name])
    for p in out.iterdir():
        p.unlink()
    assert [p.name for p in sandbox.iterdir()] == ["out"]
    tally.add("exports: writer file names", "refused" if written is None else "ok")


@fuzz(80)
@given(frames=st.integers(1, 4), bad=st.sampled_from([np.nan, np.inf, -np.inf, 1e39]),
       where=st.integers(0, 47), fps=st.one_of(st.just(30.0), st.floats(allow_nan=True), st.sampled_from([0.0, -30.0])),
       formats=st.lists(st.sampled_from(("npy", "obj", "glb", "arkit_csv", "arkit_json")), min_size=1, max_size=5,
                        unique=True))
def test_non_finite_vertices_or_fps_are_refused(frames, bad, where, fps, formats, sandbox, tally):
    """NaN/inf vertices (1e39 overflows float32) or a bad fps: ValueError and no file, for every format
    (regression: npy and the OBJ zip were written with NaN in them)."""
    tally.add("exports: non-finite values")
    out = sandbox / "out"
    verts = animation(frames).vertices.copy()
    with np.errstate(over="ignore"):
        verts.reshape(-1)[where % verts.size] = np.float32(bad)
    anim = animation(frames, verts, fps=fps)
    with bounded(), pytest.raises(ValueError, match="NaN|infinite|fps"):
        export_all(anim, out, formats=formats, strict=True)
    assert list(out.iterdir()) == []


def test_out_dir_that_is_a_file(sandbox, tally):
    tally.add("exports: stems")
    (sandbox / "file").write_text("x")
    try:
        with pytest.raises(ValueError, match="not a folder"):
            export_all(animation(), sandbox / "file")
        with pytest.raises(ValueError, match="not a folder"):
            export_all(animation(), sandbox / "file" / "sub")
    finally:
        (sandbox / "file").unlink()


# ---------------------------------------------------------------------------------------------
# Coverage-guided: a short atheris run per target (tests/fuzz_atheris.py; long runs by hand)


@pytest.mark.parametrize("target, runs", [("timeline", 5000), ("config", 2000), ("audio", 300)])
@pytest.mark.slow
def test_atheris_short_run_finds_nothing(target, runs, tmp_path):
    pytest.importorskip("atheris")
    harness = Path(__file__).with_name("fuzz_atheris.py")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, str(harness), target, f"-atheris_runs={runs}", "-timeout=30", "-seed=1"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"Done {runs} " in out.stderr, out.stderr[-1000:]
    assert not list(tmp_path.glob("crash-*")) + list(tmp_path.glob("timeout-*"))
