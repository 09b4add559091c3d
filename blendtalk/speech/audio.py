"""Audio in: load any common format, validate, mix to mono, resample to 16 kHz; log-mel features.

Everything downstream sees float32 mono at `SAMPLE_RATE`, and motion frames at `FPS`, with
`num_frames` the one definition of how many frames a clip has.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
from pathlib import Path

import numpy as np

from ..constants import FPS, SAMPLE_RATE

MIN_SECONDS = 0.2  # s, shorter clips hold less than one syllable and give < 6 motion frames
MAX_SECONDS = 120.0  # s, default cap: memory and the app's patience, not a model limit
SILENCE_RMS_DBFS = -60.0  # dB re full scale; a clip whose RMS is below this is treated as silent
CLIP_LEVEL = 0.999  # |sample| at or above this (full scale = 1) counts as clipped
MAX_CLIPPED_SHARE = 0.05  # more than this share of clipped samples is "heavily clipped"
# Float audio may peak over full scale: an MP3 or AAC decodes a little over 1 where the recording
# reached it (the encoder's ringing; gradio's sample heath_ledger.mp3 peaks at 1.045), and float WAV
# has headroom. Up to 12 dB over, it is scaled to peak at 1; further is int PCM given as float.
MAX_FLOAT_PEAK = 4.0
MAX_CHANNELS = 16  # more columns than this in an array is taken as a layout mistake, not channels
MIN_SAMPLE_RATE = 4_000  # Hz; below this a header is broken (speech needs ~2 kHz of bandwidth, telephony has 8 kHz)
MAX_SAMPLE_RATE = 384_000  # Hz; the highest rate audio interfaces record at; above it a header is broken
MAX_DECODED_SAMPLES = 64 * 2**20  # frames x channels decoded from one file: 256 MB as float32 (120 s of 8-channel
#                                   48 kHz audio fits); bounds a compressed file that expands (e.g. a FLAC of hours)
FFMPEG_TIMEOUT = 120.0  # s per ffmpeg call; decoding 120 s of audio takes well under a second

SOUNDFILE_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff")  # decoded by libsndfile
FFMPEG_SUFFIXES = (".mp3", ".m4a", ".aac", ".mp4", ".opus", ".webm", ".wma", ".mka", ".mkv", ".mov")
ACCEPTED = "wav, flac, ogg (libsndfile) or mp3, m4a, aac, mp4, opus, webm, wma (ffmpeg)"

N_FFT = 512  # samples, 32 ms STFT window (zero-padded from WIN_LENGTH)
WIN_LENGTH = 400  # samples, 25 ms analysis window, the usual speech front-end choice
HOP_LENGTH = 160  # samples, 10 ms; mel frames are pooled onto the 30 fps motion frames
MEL_FMIN = 20.0  # Hz, lowest mel band edge: below it is rumble, not speech
MEL_BREAK_HZ = 1000.0  # Hz where Slaney's mel scale turns from linear to logarithmic
MEL_LOG_STEP = math.log(6.4) / 27.0  # log-Hz per mel above the break (27 mel per factor 6.4)
LOG_MEL_FLOOR = 1e-5  # mel power floor before the log at REFERENCE_POWER, about -50 dB; keeps silence finite
REFERENCE_POWER = 0.01  # mean square of speech at -20 dBFS RMS, the synthetic corpus's level (-23 to -19 dBFS)
MIN_POWER = 1e-6  # mean square at -60 dBFS (SILENCE_RMS_DBFS): the floor sinks no lower than for this level
MAINS_HZ = (50.0, 60.0)  # mains hum fundamentals
HUM_HARMONICS = 8  # harmonics notched where present: up to 400 / 480 Hz
HUM_PROMINENCE = 30.0  # a hum line: its +-0.5 Hz hold this many times the median power of its +-5 Hz neighbourhood
HUM_CUT_HZ = 0.5  # half-width of the band cut around a hum line (+-2 Hz took more speech than it left hum)
RUMBLE_SHARE = 0.01  # share of a clip's power below MEL_FMIN from which it is rumble to take off (speech: < 1e-3)
LEVEL_BLOCK = 320  # samples: a live stream measures its level and DC offset per 20 ms block, whatever its chunks
LEVEL_MEMORY = 500  # blocks: a stream's floor follows the level of the 10 s before a frame's last sample
LEVEL_PRIOR = 150  # blocks: until 3 s have been heard, the rest counts as speech at REFERENCE_POWER

_DURATION_RE = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d*)?)")


class AudioError(ValueError):
    """Audio that cannot be used: the message says what was wrong and what is accepted."""


def num_frames(num_samples: int, fps: int = FPS, sample_rate: int = SAMPLE_RATE) -> int:
    """Motion frames T for S audio samples: T = round(S * fps / sample_rate), halves rounded up.

    This is the one definition used everywhere (features, phones, animation, video).
    """
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    # Integer arithmetic so that no float error can flip a frame count.
    return int((2 * int(num_samples) * fps + sample_rate) // (2 * sample_rate))


def load_audio(
    source: str | os.PathLike | np.ndarray,
    sample_rate: int | None = None,
    max_seconds: float = MAX_SECONDS,
) -> np.ndarray:
    """Load and validate speech; return float32 mono (S,) at `SAMPLE_RATE` (16 kHz).

    `source` is a path (wav/flac/ogg through libsndfile; mp3, m4a and other containers through the
    ffmpeg binary of imageio-ffmpeg) or an array (S,) or (S, C) with its `sample_rate` in Hz
    (float in [-1, 1], or int16/int32 PCM). Channels are averaged to mono and its DC offset taken off
    (`remove_dc`), and so are stationary mains hum and rumble where there are any (`remove_hum`).
    Float audio that peaks over full scale (a lossy codec's overshoot, up to `MAX_FLOAT_PEAK`) is
    scaled to peak at 1 first.

    Raises:
        AudioError: missing/unreadable/unsupported file, no samples, shorter than MIN_SECONDS,
            longer than `max_seconds`, NaN/inf samples, silence, or heavy clipping.
    """
    if not (isinstance(max_seconds, (int, float)) and math.isfinite(max_seconds) and max_seconds > MIN_SECONDS):
        raise ValueError(f"max_seconds must be a finite number above MIN_SECONDS={MIN_SECONDS}, got {max_seconds!r}")
    if isinstance(source, np.ndarray):
        if sample_rate is None:
            raise AudioError("An audio array needs its sample_rate in Hz, e.g. load_audio(x, sample_rate=16000).")
        data, sr = _array_samples(source), _array_rate(sample_rate)
        _check_length(data.shape[0], sr, max_seconds, "audio array")
    elif isinstance(source, (str, os.PathLike)):
        if sample_rate is not None:
            raise AudioError("sample_rate is only for arrays; a file's sample rate comes from its header.")
        data, sr = _read_file(Path(source), max_seconds)
    else:
        raise AudioError(f"Audio source must be a file path or a numpy array, got {type(source).__name__}.")
    return _validate_and_convert(data, sr)


def _array_rate(sample_rate) -> int:
    """An array's sample rate in Hz: a whole number (int or integral float); range checked with the length."""
    if isinstance(sample_rate, (bool, np.bool_)) or not isinstance(sample_rate, (int, float, np.integer, np.floating)):
        raise AudioError(f"sample_rate must be a number of Hz, e.g. 16000, got {sample_rate!r}.")
    if not (math.isfinite(sample_rate) and float(sample_rate).is_integer()):
        raise AudioError(f"sample_rate must be a whole number of Hz, e.g. 16000, got {sample_rate!r}.")
    return int(sample_rate)


def _array_samples(x: np.ndarray) -> np.ndarray:
    """Array (S,) or (S, C) of float or int PCM -> float32 (S, C)."""
    if x.ndim == 1:
        x = x[:, None]
    elif x.ndim != 2 or not 1 <= x.shape[1] <= MAX_CHANNELS:
        raise AudioError(
            f"Audio array must be (S,) or (S, C) with 1 <= C <= {MAX_CHANNELS} channels, got shape "
            f"{tuple(x.shape)}; transpose a (C, S) array first."
        )
    if x.dtype == np.int16:
        return x.astype(np.float32) / 32768.0
    if x.dtype == np.int32:
        return x.astype(np.float32) / 2147483648.0
    if np.issubdtype(x.dtype, np.floating):
        return x.astype(np.float32, copy=False)
    raise AudioError(f"Audio array dtype must be float, int16 or int32, got {x.dtype}.")


def _check_length(num_samples: int, sr: int, max_seconds: float, what: str, channels: int = 1) -> None:
    """Sample rate, duration and decoded-size checks that run before anything large is decoded or resampled."""
    rate_error = AudioError(f"The {what} has sample rate {sr} Hz; {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz is accepted "
                            f"(a broken header, or resample it first).")
    if sr <= 0:
        raise rate_error
    if num_samples == 0:
        raise AudioError(f"The {what} contains no audio samples; give at least {MIN_SECONDS} s of speech.")
    seconds = num_samples / sr
    if seconds > max_seconds:
        raise AudioError(f"The {what} is {seconds:.1f} s long; at most {max_seconds:g} s is accepted, trim it first.")
    if not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:
        raise rate_error
    if seconds < MIN_SECONDS:
        raise AudioError(f"The {what} is {seconds:.3f} s long; at least {MIN_SECONDS} s of speech is needed.")
    if num_samples * channels > MAX_DECODED_SAMPLES:
        raise AudioError(f"The {what} holds {num_samples} frames x {channels} channels, more than "
                         f"{MAX_DECODED_SAMPLES} samples in all; mix it down to mono or resample it to 48 kHz first.")


def _read_file(path: Path, max_seconds: float) -> tuple[np.ndarray, int]:
    """Decode a file to float32 (S, C) and its sample rate, checking duration from the header first."""
    try:
        if not path.exists():
            raise AudioError(f"Audio file not found: {path}.")
        if not path.is_file():
            raise AudioError(f"Audio path is not a file: {path.name}.")
        if path.stat().st_size == 0:
            raise AudioError(f"Audio file is empty (0 bytes): {path.name}.")
    except OSError as err:  # a name too long for the file system, a broken mount, no permission
        raise AudioError(f"Cannot open the audio file {path.name[:200]!r}: {err.strerror or err}.") from None
    suffix = path.suffix.lower()
    if suffix in SOUNDFILE_SUFFIXES:
        return _read_soundfile(path, max_seconds)
    if suffix in FFMPEG_SUFFIXES:
        return _read_ffmpeg(path, max_seconds)
    raise AudioError(f"Unsupported audio format '{suffix or path.name}'; accepted: {ACCEPTED}.")


def _read_soundfile(path: Path, max_seconds: float) -> tuple[np.ndarray, int]:
    import soundfile as sf

    what = f"audio file {path.name}"
    try:
        info = sf.info(str(path))
    except Exception as err:  # libsndfile raises its own error type for every kind of bad file
        raise AudioError(
            f"Could not read {path.name} as {path.suffix.lower()[1:]} audio (corrupt, truncated or not "
            f"audio: {err}); accepted: {ACCEPTED}."
        ) from None
    _check_length(info.frames, info.samplerate, max_seconds, what, max(1, info.channels))
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:
        raise AudioError(f"Could not decode {path.name} (corrupt or truncated: {err}).") from None
    _check_length(data.shape[0], sr, max_seconds, what)
    return data, sr


def _read_ffmpeg(path: Path, max_seconds: float) -> tuple[np.ndarray, int]:
    import imageio_ffmpeg

    exe = imageio_ffmpeg.get_ffmpeg_exe()
    what = f"audio file {path.name}"
    # "file:" and the whitelist: a name such as "concat:a|b.mp3" or "pipe:0.mp3" is a file, never a protocol,
    # and the file cannot make ffmpeg open other files or URLs (playlists).
    source = ["-protocol_whitelist", "file", "-i", f"file:{path}"]
    # `ffmpeg -i` without an output prints the container header (duration) and exits non-zero.
    probe = _run_ffmpeg([exe, "-hide_banner", "-nostdin", *source], path)
    probe_text = probe.stderr.decode(errors="replace")
    if "Audio:" not in probe_text:
        raise AudioError(f"Could not read {path.name}: ffmpeg finds no audio stream in it; accepted: {ACCEPTED}.")
    match = _DURATION_RE.search(probe_text)
    if match:
        h, m, s = match.groups()
        seconds = int(h) * 3600 + int(m) * 60 + float(s)
        if seconds > max_seconds:
            raise AudioError(f"The {what} is {seconds:.1f} s long; at most {max_seconds:g} s is accepted, trim it first.")
    # -t caps the decode even when the header had no duration or lied about it.
    cmd = [exe, "-hide_banner", "-nostdin", "-v", "error", *source, "-t", f"{max_seconds + 1.0:.3f}",
           "-map", "0:a:0", "-f", "f32le", "-ac", "1", "-ar", str(SAMPLE_RATE), "-"]
    out = _run_ffmpeg(cmd, path)
    if out.returncode != 0:
        last = out.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["unknown error"]
        raise AudioError(f"ffmpeg could not decode {path.name} ({last[0]}); accepted: {ACCEPTED}.")
    data = np.frombuffer(out.stdout, dtype="<f4").astype(np.float32)[:, None]
    _check_length(data.shape[0], SAMPLE_RATE, max_seconds, what)
    return data, SAMPLE_RATE


def _run_ffmpeg(cmd: list[str], path: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=FFMPEG_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AudioError(f"ffmpeg took more than {FFMPEG_TIMEOUT:g} s on {path.name}; "
                         "convert it to wav first.") from None


def _validate_and_convert(data: np.ndarray, sr: int) -> np.ndarray:
    """float32 (S, C) at `sr` -> validated float32 mono (S,) at SAMPLE_RATE."""
    if not np.isfinite(data).all():
        raise AudioError("Audio contains NaN or infinite samples; give finite samples in [-1, 1].")
    peak = float(np.abs(data).max())
    if peak > MAX_FLOAT_PEAK:
        raise AudioError(
            f"Float audio must lie in [-1, 1] but peaks at {peak:.4g}; divide int16 PCM by 32768 first."
        )
    # Clipping is judged on the raw channels: averaging would hide one clipped channel.
    clipped = float(np.mean(np.abs(data) >= CLIP_LEVEL))
    if clipped > MAX_CLIPPED_SHARE:
        raise AudioError(
            f"Audio is heavily clipped: {clipped:.1%} of samples are at full scale (at most "
            f"{MAX_CLIPPED_SHARE:.0%} accepted); record it again at a lower level."
        )
    if peak > 1.0:  # scaled, not clipped, so that the waveform keeps its shape
        data = data / np.float32(peak)
    mono = remove_dc(data.mean(axis=1, dtype=np.float32))
    rms = float(np.sqrt(np.mean(np.square(mono, dtype=np.float64))))
    rms_dbfs = 20.0 * math.log10(max(rms, 1e-12))
    if rms_dbfs < SILENCE_RMS_DBFS:
        raise AudioError(
            f"Audio is silent (RMS {rms_dbfs:.0f} dBFS, below {SILENCE_RMS_DBFS:.0f} dBFS); give a recording of speech."
        )
    if sr != SAMPLE_RATE:
        mono = resample(mono, sr)
    return np.ascontiguousarray(remove_hum(mono), dtype=np.float32)


def remove_dc(audio: np.ndarray) -> np.ndarray:
    """Audio (S,) less its mean (float32). A DC offset (a cheap converter's) is no sound, but its leak into
    the lowest mel bands moves the speech model's mouth: 0.15 mm over ARCTIC's sentence at an offset of
    0.02 full scale, and pocketsphinx heard another word (docs/experiments.md)."""
    return (audio - np.mean(audio, dtype=np.float64)).astype(np.float32)


def hum_lines(power: np.ndarray, hz: np.ndarray) -> list[float]:
    """The mains hum lines (Hz) of a spectrum (power at frequencies `hz`, 1 Hz apart or closer): a line
    at 50 or 60 Hz whose +-0.5 Hz hold HUM_PROMINENCE times the median power of its +-5 Hz
    neighbourhood, then each of its harmonics up to HUM_HARMONICS that stands a third as high."""

    def prominence(line_hz: float) -> float:
        distance = np.abs(hz - line_hz)
        line, near = distance <= 0.5, (distance <= 5.0) & (distance > 1.0)
        if not line.any() or not near.any():
            return 0.0
        return float(power[line].mean() / max(np.median(power[near]), 1e-30))

    lines = []
    for mains in MAINS_HZ:
        if prominence(mains) >= HUM_PROMINENCE:
            lines += [k * mains for k in range(1, HUM_HARMONICS + 1) if k == 1 or prominence(k * mains) >= HUM_PROMINENCE / 3]
    return lines


def remove_hum(audio: np.ndarray) -> np.ndarray:
    """Audio (S,) at 16 kHz less stationary mains hum and rumble, where the clip has them; otherwise
    returned as it is. Like a DC offset, both sit in the lowest mel bands, which the speech model
    reads: hum at 50 Hz 27 dB under the speech moved the face 0.21 mm (docs/experiments.md).
    Hum lines are found on the whole clip's spectrum (`hum_lines`) and cut +-HUM_CUT_HZ, which holds
    next to no speech. Rumble (power below MEL_FMIN over RUMBLE_SHARE of the clip's) is cut below
    MEL_FMIN."""
    spectrum = np.fft.rfft(np.asarray(audio, np.float64))
    power = np.abs(spectrum) ** 2
    hz = np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE)
    cut = np.zeros(len(hz), bool)
    for line in hum_lines(power, hz):
        cut |= np.abs(hz - line) <= HUM_CUT_HZ
    if power[hz < MEL_FMIN].sum() > RUMBLE_SHARE * power.sum():
        cut |= hz < MEL_FMIN
    if not cut.any():
        return audio
    spectrum[cut] = 0.0
    return np.fft.irfft(spectrum, n=len(audio)).astype(np.float32)


class _Blockwise:
    """Chunks (S,) float32 in, the same less a correction out, for audio that arrives in chunks (a
    live session). The correction is estimated again at the end of every whole LEVEL_BLOCK, from the
    blocks so far, and each block's samples lose a ramp from the estimate before the previous block
    to the one after it (a step would be a click in every band). Estimating per block, not per chunk,
    gives the same samples however the audio is cut into chunks. Subclasses say what is corrected
    (`_correction`) and how a finished block moves the estimate (`_update`)."""

    def __init__(self):
        self.count = 0  # samples seen
        self.partial = np.zeros(0, np.float32)  # the current block's samples so far

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Chunk (S,) float32 -> the chunk less the correction (S,) float32."""
        out, i, block = np.empty(len(x), np.float32), 0, LEVEL_BLOCK
        while i < len(x):
            at = self.count % block
            take = min(block - at, len(x) - i)
            ramp = np.arange(at + 1, at + take + 1) / block  # (take,) from the previous estimate to the latest
            out[i : i + take] = x[i : i + take] - self._correction(self.count + np.arange(take), ramp)
            self.partial = np.concatenate([self.partial, x[i : i + take]])
            self.count += take
            i += take
            if self.count % block == 0:
                self._update(self.partial)
                self.partial = np.zeros(0, np.float32)
        return out

    def _correction(self, n: np.ndarray, ramp: np.ndarray) -> np.ndarray:
        """What samples n (S,) (counted from the stream's start) lose, at ramp (S,) in (0, 1]."""
        raise NotImplementedError

    def _update(self, block: np.ndarray) -> None:
        raise NotImplementedError


class RunningDc(_Blockwise):
    """`remove_dc` for a live session (`_Blockwise`): the mean of the blocks so far, then a running
    mean with about `memory` seconds of memory. The first block passes as it came, and a steady
    offset is gone within about half a second."""

    def __init__(self, memory: float = 2.0):
        super().__init__()
        self.memory = int(memory * SAMPLE_RATE)  # samples
        self.before = 0.0  # where the current block's ramp starts
        self.level = 0.0  # where it ends: the estimate from the blocks before it

    def _correction(self, n: np.ndarray, ramp: np.ndarray) -> np.ndarray:
        return self.before + (self.level - self.before) * ramp

    def _update(self, block: np.ndarray) -> None:
        weight = len(block) / (min(self.count - len(block), self.memory) + len(block))
        self.before = self.level
        self.level += weight * (float(np.mean(block, dtype=np.float64)) - self.level)


class RunningHum(_Blockwise):
    """`remove_hum`'s hum cut for a live session (`_Blockwise`, after `RunningDc`). At every block the
    last second is searched for hum lines (`hum_lines`; a second holds whole periods of 50 and 60 Hz
    and their harmonics, so each line is one FFT bin: its amplitude and phase), and the hum it finds
    is subtracted from the samples that follow, continued in time. Until a second has arrived, and
    where there is no hum, samples pass as they came. Rumble is not cut here."""

    WINDOW = SAMPLE_RATE  # samples: one second

    def __init__(self):
        super().__init__()
        self.recent = np.zeros(0, np.float32)  # the last WINDOW samples of whole blocks
        self.before: list[tuple[float, complex]] = []  # (Hz, amplitude at sample 0) of the previous fit
        self.fit: list[tuple[float, complex]] = []  # ... of the fit the current block ramps to

    def _correction(self, n: np.ndarray, ramp: np.ndarray) -> np.ndarray:
        return (1 - ramp) * self._hum(self.before, n) + ramp * self._hum(self.fit, n)

    def _update(self, block: np.ndarray) -> None:
        self.recent = np.concatenate([self.recent, block])[-self.WINDOW :]
        self.before, self.fit = self.fit, self._search()

    def _search(self) -> list[tuple[float, complex]]:
        if len(self.recent) < self.WINDOW:
            return []
        spectrum = np.fft.rfft(self.recent.astype(np.float64))
        hz = np.fft.rfftfreq(self.WINDOW, 1 / SAMPLE_RATE)
        start = self.count - self.WINDOW  # the window's first sample: the bins' phases are relative to it
        lines = []
        for line in hum_lines(np.abs(spectrum) ** 2, hz):
            value = spectrum[int(round(line))] * 2 / self.WINDOW  # a 1 Hz grid: line Hz is bin `line`
            lines.append((line, value * np.exp(-2j * np.pi * line * start / SAMPLE_RATE)))
        return lines

    @staticmethod
    def _hum(lines: list[tuple[float, complex]], n: np.ndarray) -> np.ndarray:
        """The hum of `lines` at absolute samples n (S,) -> (S,) float64."""
        out = np.zeros(len(n))
        for line, amplitude in lines:
            out += np.real(amplitude * np.exp(2j * np.pi * line * n / SAMPLE_RATE))
        return out


def resample(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """(S,) float32 mono at `sample_rate` -> (ceil(S * SAMPLE_RATE / sample_rate),) float32 at SAMPLE_RATE.

    libsoxr's high-quality filter, called directly: the same filter librosa's "soxr_hq" wraps, without
    librosa's numba-compiled helpers, whose first compile in a process cost 5-30 s and ~100 MB.
    """
    import soxr

    out = soxr.resample(np.ascontiguousarray(audio, dtype=np.float32), sample_rate, SAMPLE_RATE, quality="HQ")
    length = -(-len(audio) * SAMPLE_RATE // int(sample_rate))
    return np.pad(out[:length], (0, max(0, length - len(out))))


def _power_spectrogram(audio: np.ndarray) -> np.ndarray:
    """|STFT|^2 of (S,) audio -> (N_FFT // 2 + 1, F) with F = 1 + S // HOP_LENGTH, frames centred.

    Plain numpy (same framing as librosa.stft(center=True)): librosa's STFT costs about a second
    of lazy imports per process, which matters for tests and the app's first request.
    """
    pad = N_FFT // 2
    mode = "reflect" if audio.shape[0] > pad else "constant"
    padded = np.pad(audio, pad, mode=mode)
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH]  # (F, N_FFT)
    left = (N_FFT - WIN_LENGTH) // 2
    window = np.zeros(N_FFT, dtype=np.float32)
    window[left:left + WIN_LENGTH] = np.hanning(WIN_LENGTH + 1)[:-1]  # periodic Hann, centred
    return (np.abs(np.fft.rfft(frames * window, axis=1)) ** 2).T.astype(np.float32)


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear (3 mel per 200 Hz) below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    log_part = MEL_BREAK_HZ * 3 / 200 + np.log(np.maximum(hz, MEL_BREAK_HZ) / MEL_BREAK_HZ) / MEL_LOG_STEP
    return np.where(hz < MEL_BREAK_HZ, hz * 3 / 200, log_part)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of `_hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    break_mel = MEL_BREAK_HZ * 3 / 200
    return np.where(mel < break_mel, mel * 200 / 3, MEL_BREAK_HZ * np.exp(MEL_LOG_STEP * (mel - break_mel)))


def mel_filters(n_mels: int = 80, fmin: float = MEL_FMIN, fmax: float = SAMPLE_RATE / 2) -> np.ndarray:
    """Triangular mel filter bank (n_mels, N_FFT // 2 + 1) float32 on the Slaney scale, each filter
    area-normalised (2 / its width in Hz), the bank librosa.filters.mel builds by default."""
    bins = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)  # (N_FFT // 2 + 1,) Hz
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))  # (n_mels + 2,) Hz
    rising = (bins[None] - edges[:-2, None]) / np.diff(edges)[:-1, None]
    falling = (edges[2:, None] - bins[None]) / np.diff(edges)[1:, None]
    bank = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return bank.astype(np.float32)


def mel_floor(power: float) -> float:
    """The mel power floor before the log for audio of mean square `power`: LOG_MEL_FLOOR at
    REFERENCE_POWER, moving with the level. A fixed floor swallowed a quiet recording's weak bands,
    and the speech model, which normalises every band over the clip, moved the face 0.13 mm for the
    same sentence 15 dB quieter (docs/experiments.md); with the floor at the same distance below the
    speech, a level change only shifts every band alike, which the normalisation takes out."""
    return LOG_MEL_FLOOR * max(power, MIN_POWER) / REFERENCE_POWER


def block_levels(audio: np.ndarray) -> np.ndarray:
    """Mean squares (S // LEVEL_BLOCK,) float64 of the whole LEVEL_BLOCKs of audio (S,)."""
    whole = len(audio) // LEVEL_BLOCK * LEVEL_BLOCK
    return np.square(audio[:whole].reshape(-1, LEVEL_BLOCK), dtype=np.float64).mean(1)


def level_floor(window: np.ndarray) -> float:
    """`mel_floor` for a frame of a live stream from `window`, the `block_levels` of the (at most
    LEVEL_MEMORY) whole blocks before its last sample, padded to LEVEL_PRIOR blocks at REFERENCE_POWER:
    a stream cannot know its clip's level, so it starts from a speaker's usual one and moves to the
    microphone's over a few seconds."""
    pad = max(0, LEVEL_PRIOR - len(window))
    return mel_floor((float(np.sum(window)) + pad * REFERENCE_POWER) / (len(window) + pad))


def log_mel(audio: np.ndarray, n_mels: int = 80) -> np.ndarray:
    """Log-mel features at the motion frame rate: audio (S,) at 16 kHz -> (T, n_mels) float32.

    T = num_frames(S). Mel power at a 10 ms hop is averaged over each motion frame's span
    [t/FPS, (t+1)/FPS) before the log, so every motion frame sees all of its audio. The floor
    before the log follows the clip's level (`mel_floor`).
    """
    if audio.ndim != 1 or audio.shape[0] == 0:
        raise ValueError(f"audio must be (S,) with S > 0 samples, got shape {tuple(audio.shape)}")
    if n_mels < 1:
        raise ValueError(f"n_mels must be >= 1, got {n_mels}")
    audio = np.asarray(audio, dtype=np.float32)
    spec = _power_spectrogram(audio)  # (N_FFT // 2 + 1, F)
    mel_fb = mel_filters(n_mels)
    mel = (mel_fb @ spec).T  # (F, n_mels), mel frame f centred at f * HOP_LENGTH samples
    t = num_frames(audio.shape[0])
    if t == 0:
        return np.zeros((0, n_mels), dtype=np.float32)
    # First mel frame whose centre lies at or after each motion frame's start.
    starts = -(-np.arange(t, dtype=np.int64) * SAMPLE_RATE // (FPS * HOP_LENGTH))
    starts = np.minimum(starts, mel.shape[0] - 1)
    ends = np.append(starts[1:], mel.shape[0])
    ends = np.maximum(ends, starts + 1)  # never an empty span, even at the clip's end
    sums = np.add.reduceat(mel, starts, axis=0)  # (T, n_mels) sums from each start to the next start
    sums[-1] = mel[starts[-1]:].sum(axis=0)
    pooled = sums / (ends - starts)[:, None]
    return np.log(pooled + mel_floor(float(np.mean(np.square(audio, dtype=np.float64))))).astype(np.float32)
