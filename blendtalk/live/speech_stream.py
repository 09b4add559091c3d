"""The speech half of live mode: 16 kHz samples in, speech displacements d_s (V, 3) frame by frame out.

The file path (`Pipeline.speech_deformation`) sees a whole clip: the words recognised in all of it
and their phones aligned, log-mel normalised by the clip's mean and spread, a bidirectional GRU
over every frame. Here every stage keeps a bounded state and frame t is final once the audio of
frame t + LOOKAHEAD is in:

    samples ──► log-mel per motion frame (the file path's framing, frame by frame)
            ──► phones: pocketsphinx live decoding, the partial hypothesis read at each frame
            ──► phonetic encoder: mel normalised by running statistics (a prior, then the stream's
                own), conv blocks over a short window, the GRU's forward half carried frame to
                frame, its backward half run over the look-ahead window only; where one ships for
                the speech model, a copy distilled to give from such windows what the whole clip
                gives (`models.stream_encoder`)
            ──► FaceFormer decoder: one cached step per frame (its ring buffer of `window` frames)

Everything frame t reads is fixed by the samples up to `needed_samples(t + lookahead)`, so the
frames do not depend on how the audio was cut into chunks.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..speech.audio import HOP_LENGTH, LEVEL_BLOCK, LEVEL_MEMORY, N_FFT, WIN_LENGTH, block_levels, level_floor, mel_filters
from ..constants import FPS, SAMPLE_RATE
from ..models.audio_encoders import CMVN_STD_FLOOR
from ..speech.features import PHONETIC_MELS
from ..speech.phones import ARPABET, PHONE_INDEX
from ..speech.sphinx import ALIGN_FRAME_RATE
from ..speech.sphinx import allphone_decoder as _allphone_decoder
from ..speech.sphinx import sphinx_symbol as _sphinx_symbol

MEL_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100 mel frames per second
UTTERANCE_SECONDS = 15.0  # s: pocketsphinx restarts its utterance at the next quiet frame after this long
UTTERANCE_MAX_SECONDS = 30.0  # s: ... and anyway after this long (its search memory grows with the utterance)
QUIET_DBFS = -45.0  # dBFS: a frame this quiet is a place to restart the recogniser


@dataclass
class StreamConfig:
    """The speech stream's window and memory."""

    lookahead: int = 6  # frames (200 ms) of audio after frame t that its encoder window reads; see docs/live.md
    edge_ms: float = 0.0  # ms of the next frame's audio the window also reads (its first mel frames): a step finer than a frame
    cmvn_prior_frames: int = 90  # the prior mel statistics count as this many frames (3 s) of the stream's own
    cmvn_memory_frames: int = 1800  # frames (60 s): older audio's weight in the running statistics decays with this
    speaker: int | None = None  # training style index; None: the mean of all styles, as the file path

    def __post_init__(self):
        if not (isinstance(self.lookahead, int) and 0 <= self.lookahead <= 30):
            raise ValueError(f"lookahead must be a whole number of frames in [0, 30] (1 s), got {self.lookahead!r}")
        if not (0.0 <= self.edge_ms < 1000 / FPS):
            raise ValueError(f"edge_ms must be in [0, {1000 / FPS:.1f}) ms (a longer look-ahead is whole frames: "
                             f"lookahead); got {self.edge_ms!r}")
        if self.cmvn_prior_frames < 1 or self.cmvn_memory_frames < 1:
            raise ValueError("cmvn_prior_frames and cmvn_memory_frames must be >= 1")


@dataclass(frozen=True)
class SpeechPrior:
    """Where the running normalisations start: log-mel mean and spread (80,) each, and
    pocketsphinx's cepstral mean (its comma-separated string); see `speech_prior`."""

    mel_mean: np.ndarray
    mel_std: np.ndarray
    cepstral_mean: str | None = None


def speech_prior(audio: np.ndarray) -> SpeechPrior:
    """The statistics of a speech recording (S,) at 16 kHz, as the live normalisations' starting point."""
    from ..speech.audio import log_mel
    from ..speech.phonetics import _to_pcm16
    from ..speech.sphinx import decode as _decode

    mel = log_mel(audio)
    decoder = _allphone_decoder()
    _decode(decoder, _to_pcm16(audio))
    return SpeechPrior(mel.mean(0), mel.std(0), decoder.get_cmn())


def frame_start(t: int) -> int:
    """First sample of motion frame t (frames are 533.3 samples; rounded as `audio.num_frames`)."""
    return (2 * t * SAMPLE_RATE + FPS) // (2 * FPS)


def mel_span(t: int) -> tuple[int, int]:
    """Mel frames [a, b) pooled into motion frame t (`audio.log_mel`: centres in [t/FPS, (t+1)/FPS))."""
    return -(-t * MEL_PER_SECOND // FPS), -(-(t + 1) * MEL_PER_SECOND // FPS)


def needed_samples(t: int) -> int:
    """Samples that must have arrived before motion frame t's features are final (its last mel window)."""
    return (mel_span(t)[1] - 1) * HOP_LENGTH + N_FFT // 2


def edge_mels(t: int, edge_ms: float) -> int:
    """Mel frames of motion frame t centred less than `edge_ms` after its start (0 .. all of them)."""
    a, b = mel_span(t)
    limit = t * MEL_PER_SECOND / FPS + edge_ms * MEL_PER_SECOND / 1000  # in mel frames
    return int(sum(1 for m in range(a, b) if m < limit - 1e-9))


def window_samples(t: int, lookahead: int, edge_ms: float = 0.0) -> int:
    """Samples that must have arrived before frame t's speech displacement is final: its window's
    full frames up to t + lookahead, then the first mel frames of t + lookahead + 1 (`edge_ms`)."""
    k = edge_mels(t + lookahead + 1, edge_ms)
    if k == 0:
        return needed_samples(t + lookahead)
    return (mel_span(t + lookahead + 1)[0] + k - 1) * HOP_LENGTH + N_FFT // 2


class _MelStream:
    """Log-mel (80,) of each motion frame as its samples arrive, as `audio.log_mel` computes it on the
    same audio (but the clip's last frame, which `finish` computes with the file path's end padding),
    but for the floor before the log: the file path's follows the clip's level, a stream's the level
    of the blocks before each frame's last sample (`audio.level_floor`)."""

    def __init__(self):
        self.buffer = np.zeros(0, np.float32)  # samples from `offset` on; the oldest are dropped as frames complete
        self.offset = 0
        self.fbank = mel_filters(PHONETIC_MELS)
        left = (N_FFT - WIN_LENGTH) // 2  # the periodic Hann window of audio._power_spectrogram
        self.window = np.zeros(N_FFT, np.float32)
        self.window[left:left + WIN_LENGTH] = np.hanning(WIN_LENGTH + 1)[:-1]
        self.head = np.zeros(0, np.float32)  # the first N_FFT // 2 + 1 samples, for the reflect padding at t = 0
        self.levels: deque = deque()  # mean squares of whole LEVEL_BLOCKs, from block `first_level` on
        self.first_level = 0
        self.partial = np.zeros(0, np.float32)  # samples of the block being filled

    def push(self, x: np.ndarray) -> None:
        if len(self.head) <= N_FFT // 2:
            self.head = np.concatenate([self.head, x[: N_FFT // 2 + 1 - len(self.head)]])
        self.buffer = np.concatenate([self.buffer, x])
        self.partial = np.concatenate([self.partial, x])
        whole = len(self.partial) // LEVEL_BLOCK * LEVEL_BLOCK
        if whole:
            self.levels.extend(block_levels(self.partial[:whole]).tolist())
            self.partial = self.partial[whole:]

    def floor(self, upto: int) -> float:
        """The mel floor of a frame whose samples end at `upto` (`audio.level_floor`)."""
        end = upto // LEVEL_BLOCK
        start = max(self.first_level, end - LEVEL_MEMORY)
        return level_floor(np.array([self.levels[i - self.first_level] for i in range(start, end)], np.float64))

    @property
    def end(self) -> int:
        return self.offset + len(self.buffer)

    def frame(self, t: int, mels: int | None = None) -> np.ndarray:
        """Log-mel (80,) of motion frame t; needs samples up to needed_samples(t). mels: pool only
        its first mels frames (the look-ahead edge; the buffer is kept for the whole frame)."""
        a, b = mel_span(t)
        if mels is not None:
            b = a + mels
        idx = np.arange(a, b)[:, None] * HOP_LENGTH + np.arange(-(N_FFT // 2), N_FFT // 2)[None]  # (M, N_FFT)
        neg = idx < 0
        seg = np.empty(idx.shape, np.float32)
        seg[~neg] = self.buffer[idx[~neg] - self.offset]
        seg[neg] = self.head[-idx[neg]]  # reflect padding, as np.pad(mode="reflect")
        power = np.abs(np.fft.rfft(seg * self.window, axis=1)) ** 2  # (M, N_FFT // 2 + 1)
        mel = power.astype(np.float32) @ self.fbank.T  # (M, 80)
        floor = self.floor(int(idx.max()) + 1)
        if mels is None:
            self._drop(a)
        return np.log(mel.mean(0) + floor).astype(np.float32)

    def last_frames(self, t0: int, total_samples: int) -> np.ndarray:
        """Log-mel (T - t0, 80) of the clip's frames from t0 to its end, with the file path's end padding."""
        from ..speech.audio import num_frames

        total_frames = num_frames(total_samples)
        out = []
        for t in range(t0, total_frames):
            a, b = mel_span(t)
            last = 1 + total_samples // HOP_LENGTH  # mel frames of the whole clip
            a = min(a, last - 1)
            b = last if t == total_frames - 1 else max(min(b, last), a + 1)
            idx = np.arange(a, b)[:, None] * HOP_LENGTH + np.arange(-(N_FFT // 2), N_FFT // 2)[None]
            idx = np.where(idx < 0, -idx, idx)
            idx = np.where(idx >= total_samples, 2 * (total_samples - 1) - idx, idx)  # reflect at the end
            seg = np.where(idx - self.offset >= 0, self.buffer[np.clip(idx - self.offset, 0, len(self.buffer) - 1)],
                           self.head[np.clip(idx, 0, len(self.head) - 1)])
            power = np.abs(np.fft.rfft(seg * self.window, axis=1)) ** 2
            mel = power.astype(np.float32) @ self.fbank.T
            out.append(np.log(mel.mean(0) + self.floor(min(int(idx.max()) + 1, total_samples))))
        return np.asarray(out, np.float32).reshape(-1, PHONETIC_MELS)

    def _drop(self, first_mel: int) -> None:
        keep_level = first_mel * HOP_LENGTH // LEVEL_BLOCK - LEVEL_MEMORY  # the oldest block a later frame reads
        while self.first_level < keep_level and self.levels:
            self.levels.popleft()
            self.first_level += 1
        keep_from = max(self.offset, first_mel * HOP_LENGTH - N_FFT)  # a margin for `last_frames`
        if keep_from - self.offset > 4 * SAMPLE_RATE // 10:  # drop in blocks of 0.4 s, not per frame
            self.buffer = self.buffer[keep_from - self.offset:]
            self.offset = keep_from


class _PhoneStream:
    """pocketsphinx allphone decoding fed as the samples arrive; phones of recent frames from its
    partial hypothesis. The utterance restarts at a quiet frame every UTTERANCE_SECONDS, so the
    search stays small for hours; frames before the restart keep the phones it had found."""

    def __init__(self, cmn: str | None = None):
        self.decoder = _allphone_decoder()
        if cmn:  # the cepstral mean to start from: live CMN otherwise takes seconds to settle and misses phones
            self.decoder.set_cmn(cmn)
        self.decoder.start_utt()
        self.utt_start = 0  # sample where the current utterance began
        self.fed = 0  # samples given to the decoder
        self.segments: list[tuple[int, float, float]] = []  # (phone id, start s, end s) of the current utterance
        self.previous: list[tuple[int, float, float]] = []  # ... of the one before (for frames before the restart)
        self.cut = 0.0  # s: where the current utterance began

    def push(self, pcm: np.ndarray, quiet: bool) -> None:
        """Feed int16 samples; `quiet`: the newest frame is a pause (a place to restart)."""
        length = (self.fed - self.utt_start) / SAMPLE_RATE
        if length > UTTERANCE_MAX_SECONDS or (quiet and length > UTTERANCE_SECONDS):
            self.decoder.end_utt()
            self._read()
            self.previous = [s for s in self.segments]
            self.decoder.start_utt()
            self.utt_start, self.cut = self.fed, self.fed / SAMPLE_RATE
        self.decoder.process_raw(pcm.tobytes(), full_utt=False)
        self.fed += len(pcm)
        self._read()

    def finish(self) -> None:
        self.decoder.end_utt()
        self._read()

    def _read(self) -> None:
        self.decoder.hyp()  # the partial hypothesis; seg() then walks its segments
        base = self.utt_start / SAMPLE_RATE
        self.segments = [(PHONE_INDEX[_sphinx_symbol(s.word)], base + s.start_frame / ALIGN_FRAME_RATE,
                          base + (s.end_frame + 1) / ALIGN_FRAME_RATE) for s in (self.decoder.seg() or [])]

    def phone(self, t: int) -> int:
        """Phone id of motion frame t (the phone at its centre; "sil" where none), as `phones_to_frames`."""
        centre = (t + 0.5) / FPS
        segments = self.segments if centre >= self.cut else self.previous
        if segments and centre >= segments[-1][2] and centre < self.fed / SAMPLE_RATE:
            return segments[-1][0]  # the hypothesis lags the audio by a few frames: its last phone goes on
        for pid, a, b in reversed(segments):
            if a <= centre < b:
                return pid
            if b <= centre:
                break
        return PHONE_INDEX["sil"]


class _EncoderStream:
    """The PhoneticEncoder with a fixed look-ahead: the forward GRU carried, the backward GRU over
    frames t..t+L from a zero state (as if the clip ended at t + L)."""

    def __init__(self, encoder: nn.Module, prior: "SpeechPrior", config: StreamConfig):
        c = encoder.config
        if c.gru_layers != 1 or c.conv_layers > 4 or c.cmvn_dims != PHONETIC_MELS or c.input_dim != len(ARPABET) + PHONETIC_MELS:
            raise ValueError("live mode streams the shipped phonetic encoder layout (one bidirectional GRU layer, "
                             f"phones + {PHONETIC_MELS} mel); this checkpoint has {c}")
        self.enc, self.config = encoder, config
        h = c.hidden_dim // 2
        self.device = encoder.input_proj.weight.device
        self.fwd, self.bwd = (nn.GRU(c.hidden_dim, h, batch_first=True, device=self.device) for _ in range(2))
        gru = encoder.gru
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            getattr(self.fwd, name).data = getattr(gru, name).data
            getattr(self.bwd, name).data = getattr(gru, name + "_reverse").data
        self.context = (c.kernel_size // 2) * c.conv_layers  # frames of conv context on each side
        self.state = None  # forward GRU state (1, 1, H/2) after the last committed frame
        self.prior_mean, self.prior_var = prior.mel_mean.astype(np.float64), np.square(prior.mel_std.astype(np.float64))
        self.n, self.s1, self.s2 = 0.0, np.zeros(PHONETIC_MELS), np.zeros(PHONETIC_MELS)

    def observe(self, mel: np.ndarray) -> None:
        """Count a new frame's log-mel (80,) in the running statistics (exponentially forgotten)."""
        decay = 1.0 - 1.0 / self.config.cmvn_memory_frames if self.n >= self.config.cmvn_memory_frames else 1.0
        self.n = self.n * decay + 1.0
        self.s1 = self.s1 * decay + mel
        self.s2 = self.s2 * decay + np.square(mel.astype(np.float64))

    def _stats(self) -> tuple[np.ndarray, np.ndarray]:
        k, n = self.config.cmvn_prior_frames, self.n
        mean = (self.s1 + k * self.prior_mean) / (n + k)
        second = (self.s2 + k * (self.prior_var + np.square(self.prior_mean))) / (n + k)
        return mean, np.sqrt(np.maximum(second - np.square(mean), 0.0))

    @torch.no_grad()
    def frame(self, t: int, phones: np.ndarray, mels: np.ndarray, first: int) -> torch.Tensor:
        """Encoder output (D,) of frame t from the window's phones (W,) and log-mel (W, 80), frames
        first..first+W-1 (first = max(0, t - context), the window's last frame is the look-ahead edge)."""
        mean, std = self._stats()
        mel = (mels - mean) / np.maximum(std, CMVN_STD_FLOOR)
        x = torch.from_numpy(np.concatenate([np.eye(len(ARPABET), dtype=np.float32)[phones], mel.astype(np.float32)], 1)).to(self.device)
        e = self.enc
        h = e.input_proj(x[None])  # (1, W, H)
        for norm, conv in zip(e.norms, e.convs):
            y = conv(norm(h).transpose(1, 2)).transpose(1, 2)  # (1, W, H), zero padded at both ends
            h = h + torch.nn.functional.gelu(y)
        i = t - first
        out_f, self.state = self.fwd(h[:, i:i + 1], self.state)  # (1, 1, H/2): one step of the carried half
        out_b, _ = self.bwd(h[:, i:].flip(1))  # (1, L+1, H/2): from the look-ahead edge back to t
        return e.output_proj(torch.cat([out_f[0, 0], out_b[0, -1]]))  # (D,)


class SpeechStream:
    """Audio (float32 in [-1, 1] at 16 kHz, any chunking) -> (t, d_s (V, 3) float32 metres, phones) per
    frame; phones = (first frame, (n,) int64): the phone ids of the window read for frame t, as read then.

    `push(x)` returns the frames its samples complete; `finish(total)` the rest, the clip's last
    frames read as the file path reads them. Memory is bounded: about a second of samples, a
    window of features, the decoder's ring buffer, and one pocketsphinx utterance.
    """

    def __init__(self, model: nn.Module, prior: "SpeechPrior", config: StreamConfig | None = None,
                 encoder: nn.Module | None = None):
        self.config = config or StreamConfig()
        if model.config.encoder.kind != "phonetic" or model.config.alignment_radius != 0:
            raise ValueError("live mode needs a FaceFormer with the phonetic encoder and alignment_radius 0 "
                             f"(the shipped one); got encoder {model.config.encoder.kind!r}, radius {model.config.alignment_radius}")
        self.model = model.eval()
        self.mel, self.phones = _MelStream(), _PhoneStream(prior.cepstral_mean)
        self.encoder = _EncoderStream(encoder if encoder is not None else model.audio_encoder, prior, self.config)
        self.features: deque = deque()  # (frame, mel (80,)) of the current window
        self.ready = 0  # frames whose features are final (the look-ahead edge is ready - 1)
        self.done = 0  # frames decoded
        self.received = 0  # samples
        c = model.config
        n = c.num_speakers
        dev = model.slopes.device
        with torch.no_grad():
            speaker = (torch.full((1, n), 1.0 / n) if self.config.speaker is None
                       else torch.nn.functional.one_hot(torch.tensor([self.config.speaker]), n).float())
            self.style = model.style_embedding(speaker.to(dev), 1)
            self.feedback = model._feedback()
        from ..models.faceformer import KVCache

        self.caches = [KVCache(1, c.num_heads, c.feature_dim // c.num_heads, c.window, dev, self.style.dtype) for _ in model.layers]
        self.pe = model._phase_table(dev)
        self.prev = torch.zeros_like(self.style)
        self.seconds: dict[int, float] = {}  # frame -> seconds its encoder and decoder step took

    @property
    def latency_frames(self) -> int:
        return self.config.lookahead

    def window_end(self, t: int) -> int:
        """Samples that must have arrived before frame t's d_s is out (`window_samples`)."""
        return window_samples(t, self.config.lookahead, self.config.edge_ms)

    def push(self, x: np.ndarray) -> list[tuple[int, np.ndarray, tuple[int, np.ndarray]]]:
        """Samples (S,) float32 -> [(t, d_s (V, 3), phones)] of the frames now final, in order."""
        self.mel.push(x)
        self.received += len(x)
        out = []
        # Two kinds of step, taken in the order of the sample count each needs: a frame's features are
        # final (needed_samples), or a frame's window is complete (window_end; with edge_ms it reads
        # part of the frame after its last full one). The recogniser is fed up to each step's sample
        # count, so that the phones are read at the same point of the audio whatever the chunking.
        while True:
            t, L = self.done, self.config.lookahead
            window = self.window_end(t)
            if self.ready > t + L and window <= self.received and window <= needed_samples(self.ready):
                edge = None
                k = edge_mels(t + L + 1, self.config.edge_ms)
                if k:
                    self._feed_phones(window, quiet=False)
                    edge = (t + L + 1, self.mel.frame(t + L + 1, mels=k))
                out.extend(self._decode(t, t + L, edge))
                continue
            if needed_samples(self.ready) > self.received:
                break
            t = self.ready
            end = needed_samples(t)
            own = self.mel.buffer[max(frame_start(t) - self.mel.offset, 0):frame_start(t + 1) - self.mel.offset]
            quiet = len(own) > 0 and 10 * math.log10(float(np.mean(np.square(own, dtype=np.float64))) + 1e-12) < QUIET_DBFS
            self._feed_phones(end, quiet)
            mel = self.mel.frame(t)
            self.encoder.observe(mel)
            self._add_feature(t, mel)
            self.ready += 1
        return out

    def _feed_phones(self, end: int, quiet: bool) -> None:
        """Give the recogniser the samples up to `end` (int16)."""
        pcm = np.clip(np.round(self.mel.buffer[self.phones.fed - self.mel.offset:end - self.mel.offset] * 32768.0),
                      -32768, 32767).astype("<i2")
        self.phones.push(pcm, quiet)

    def finish(self) -> list[tuple[int, np.ndarray, tuple[int, np.ndarray]]]:
        """The remaining frames of a clip of `received` samples, as the file path frames its end."""
        from ..speech.audio import num_frames

        total = num_frames(self.received)
        if total == 0:
            return []
        self.phones.push(np.clip(np.round(self.mel.buffer[self.phones.fed - self.mel.offset:] * 32768.0), -32768, 32767)
                         .astype("<i2"), quiet=False)
        self.phones.finish()
        first_new = min(self.ready, total - 1)  # the last frame pools the clip's end, as the file path's
        while self.features and self.features[-1][0] >= first_new:
            self.features.pop()
        for t, mel in zip(range(first_new, total), self.mel.last_frames(first_new, self.received)):
            if t >= self.ready:
                self.encoder.observe(mel)
            self._add_feature(t, mel)
        self.ready = total
        out = []
        while self.done < total:
            out.extend(self._decode(self.done, total - 1))
        return out

    def _add_feature(self, t: int, mel: np.ndarray) -> None:
        self.features.append((t, mel))
        keep = self.encoder.context + self.config.lookahead + 2
        while len(self.features) > keep:
            self.features.popleft()

    @torch.no_grad()
    def _decode(self, t: int, last: int, edge: tuple[int, np.ndarray] | None = None) -> list[tuple[int, np.ndarray, tuple[int, np.ndarray]]]:
        """Frame t with full frames up to `last` and, if given, the partial log-mel (80,) of the edge
        frame after them -> [(t, d_s (V, 3), phones)]; its seconds in `self.seconds[t]`."""
        start = time.perf_counter()
        first = max(0, t - self.encoder.context)
        window = [(f, m) for f, m in self.features if first <= f <= last] + ([edge] if edge is not None else [])
        phones = np.array([self.phones.phone(f) for f, _ in window], dtype=np.int64)
        mels = np.stack([m for _, m in window])
        feature = self.encoder.frame(t, phones, mels, window[0][0])  # (D,)
        m = self.model
        memories = []
        for layer in m.layers:
            k, v, aligned = layer.cross_attn.memory(feature[None, None])  # aligned (1, 1, D)
            memories.append((k, v, aligned.expand(-1, t + 1, -1)))  # frame t reads row t: a view, no copy
        pos = torch.tensor([t], dtype=torch.long, device=feature.device)
        h = m._step(self.prev, self.style, pos, self.pe, memories, self.caches)  # (1, D)
        self.prev = torch.nn.functional.linear(h, *self.feedback)
        d = m.motion_decoder(h).reshape(-1, 3) * m.config.motion_scale  # (V, 3)
        self.done = t + 1
        self.seconds[t] = time.perf_counter() - start
        while len(self.seconds) > 8:  # read by the session as the frame leaves; a few kept in case it is not
            self.seconds.pop(next(iter(self.seconds)))
        return [(t, d.float().cpu().numpy(), (window[0][0], phones))]
