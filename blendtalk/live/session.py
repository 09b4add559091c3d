"""Live mode: audio chunks in, animation frames out as soon as their audio window is complete.

    from blendtalk import Pipeline
    pipe = Pipeline.from_pretrained()
    session = pipe.live(emotion="happy")          # a LiveSession on the same checkpoints as animate()
    for chunk in microphone():                    # 16 kHz mono, float32 in [-1, 1] or int16, any size
        for frame in session.push(chunk):
            send(frame.arkit, frame.head_rotation, frame.gaze)
        session.set_expression("sad", 0.7)        # any time; eased in over 0.4 s
    frames = session.finish()                     # the last frames, read as the file path reads a clip's end

Per frame: `live_speech.SpeechStream` (phones, features, the speech model's cached step) gives d_s,
its lips closed where the frame's phone is /p b m/ (`speech.visemes.seal_bilabials`, as the file path);
`live_motion` the expression weights, blinks, head and gaze; the DFM fuses them as
`Pipeline.fuse(method="ours")` does, the emotion's lip-parting units yield to the speech's
closures (`Pipeline.closure_release`, which reads the frames either side: one more frame of
look-ahead), and the 52 ARKit weights are the emotion's own units plus the mapped speech half
(`ArkitMapping.with_expression_units`, as the file path exports them). See docs/live.md for the window, the
latency and the limits.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np
import torch

from ..constants import FPS, SAMPLE_RATE
from ..expression.emotions import ONSET_HOLD, pause_share, yield_to_closure
from ..expression.head_motion import HeadMotionConfig, add_posture
from ..speech.audio import RunningDc, RunningHum
from ..speech.phones import BILABIAL_IDS, SILENCE_ID
from ..speech.visemes import seal_bilabials
from .motion import ExpressionStream, HeadStream
from .speech_stream import SpeechStream, StreamConfig, frame_start

logger = logging.getLogger(__name__)

CLIP_LEVEL = 0.999  # |sample| at or above this counts as clipped (audio.CLIP_LEVEL)
CLIP_SHARE = 0.01  # a chunk with more clipped samples than this gets a clipping notice
SILENCE_DBFS = -60.0  # dBFS: below this for SILENCE_NOTICE_SECONDS the session says it hears nothing
SILENCE_NOTICE_SECONDS = 5.0  # s
NOTICE_INTERVAL_SECONDS = 10.0  # s between two notices of the same kind
MAX_AHEAD_SECONDS = 1.0  # s: with `realtime`, audio sent further ahead of real time than this is dropped
MAX_LAG_SECONDS = 1.0  # s: with `realtime`, audio that waited this long to be read (a busy CPU) is dropped to catch up
THIN_LAG_SECONDS = 0.25  # s: ... and audio that waited this long fuses every other frame only (the speech model sees all)
EXPRESSION_CACHE = 64  # distinct expression frames whose DFM encoding is kept (a held emotion is one)


class LiveInputError(ValueError):
    """A chunk the session cannot use (wrong rate, shape or type); the message says what to send."""


def check_sample_rate(sample_rate) -> None:
    """LiveInputError unless `sample_rate` is the live input's 16 kHz."""
    if isinstance(sample_rate, bool) or sample_rate != SAMPLE_RATE:
        raise LiveInputError(f"live audio must be {SAMPLE_RATE} Hz mono; got {sample_rate!r:.20} Hz: resample it before "
                             "sending (browsers: AudioContext({sampleRate: 16000}))")


@dataclass
class LiveFrame:
    """One animation frame. t: seconds from the stream's start (frame index / FPS). vertices: (V, 3)
    float32 metres, head-local. arkit: (52,) float32 in [0, 1] named by `LiveSession.arkit_names`
    (None without a mapping). head_rotation: (3,) radians [pitch, yaw, roll]; gaze: (2,) radians
    [yaw, pitch] (see `Animation`). arrived / ready: `time.perf_counter()` when the audio that
    completed the frame's window arrived and when the frame was made. stages: seconds per stage."""

    index: int
    t: float
    vertices: np.ndarray
    arkit: np.ndarray | None
    head_rotation: np.ndarray
    gaze: np.ndarray
    arrived: float = 0.0
    ready: float = 0.0
    stages: dict = field(default_factory=dict)

    @property
    def latency(self) -> float:
        """Seconds from the arrival of the audio ending this frame's window to the frame being out."""
        return self.ready - self.arrived


@dataclass
class LiveConfig:
    """A live session's window, motion and input policy."""

    lookahead: int = 4  # frames (133 ms) after frame t the speech encoder reads; +1 for the closure rule. docs/live.md
    edge_ms: float = 0.0  # ms of the frame after those the encoder also reads (10 ms steps, < 33.3): a finer look-ahead
    closure_lookahead: bool = True  # the closure rule reads frame t + 1 (lips ease a frame early, as the file path); False: a frame sooner
    stream_encoder: bool = True  # the speech encoder distilled for windows (`models.stream_encoder`) where one ships; False: the model's own
    head_motion: bool = True  # nods, turns and gaze shifts from the voice's energy
    blinks: bool = True
    seed: int = 0  # blinks, head and eye motion
    realtime: bool = False  # True (servers, microphones): audio that runs ahead of the wall clock is dropped
    max_ahead_seconds: float = MAX_AHEAD_SECONDS  # with realtime: how far ahead a client may send before drops


class LiveSession:
    """A streaming animation session on a loaded `Pipeline`; build with `Pipeline.live` / `live_session`.

    `push(chunk)` validates the chunk and returns the frames it completes (0, 1 or more); `finish()`
    returns the rest. `set_expression(...)` changes the emotion from the next frame on. `notices`
    holds the one-line messages about the input (silence, clipping, dropped floods), oldest first: read them with `notices.popleft()`.
    """

    def __init__(self, pipe, prior, config: LiveConfig, emotion: str = "neutral",
                 intensity: float = 1.0, mix_with: str | None = None, mix_ratio: float = 0.5):
        if pipe.speech_model is None or pipe.dfm is None:
            raise ValueError("live mode needs the speech model and the DFM checkpoints (Pipeline.from_pretrained "
                             "without speech='visemes')")
        self.pipe, self.config, self.rig = pipe, config, pipe.rig
        self.speech = SpeechStream(pipe.speech_model, prior, StreamConfig(lookahead=config.lookahead, edge_ms=config.edge_ms),
                                   encoder=pipe.stream_encoder() if config.stream_encoder else None)
        self.names = tuple(self.rig.blendshape_names)
        self.expression = ExpressionStream(self.names, emotion, intensity, mix_with, mix_ratio, config.blinks, config.seed)
        self.head = HeadStream(config.seed, pipe.head_motion_config if isinstance(pipe.head_motion_config, HeadMotionConfig) else None)
        self.arkit_names = self.names if pipe.arkit is not None else ()
        self.notices: deque = deque(maxlen=20)
        self._held: deque = deque()  # (t, d_s, phones) decoded, waiting for the next frame (closure rule)
        self._last_ds = None  # d_s of the frame before the oldest held one
        self._last_raw = None  # that frame as decoded, (t, d_s before the seal, phones)
        self._history: deque = deque(maxlen=math.ceil(ONSET_HOLD * FPS) + 1)  # (silent, bilabial) of the last frames out
        self._silent = None  # silent frames before the history's first; None: all since the stream's start
        self._expr_cache: OrderedDict = OrderedDict()  # weight bytes -> displacement (V, 3)
        self._samples: deque = deque()  # (first sample, chunk) still needed for head motion energies
        self.received = 0  # samples accepted
        self.dropped = 0  # samples dropped (floods and a busy CPU)
        self._dropped_by: dict[str, int] = {"flood": 0, "lag": 0}
        self.emitted = 0
        self.skipped = 0  # frames not fused because the session was behind the clock
        self._thin = False
        self._clock: float | None = None  # when the client's pace says the stream's first sample arrived
        self._quiet_since = 0
        self._last_notice: dict[str, float] = {}
        self._arrivals: deque = deque()  # (sample count, perf_counter) of accepted chunks
        self._dc, self._hum = RunningDc(), RunningHum()

    # ---- input ----
    def push(self, chunk, sample_rate: int = SAMPLE_RATE, arrived: float | None = None) -> list[LiveFrame]:
        """Audio chunk (S,) float32 in [-1, 1] or int16 at 16 kHz, mono -> the frames it completes.

        arrived: `time.perf_counter()` when the chunk was recorded or received (default: now); frame
        latencies are measured from it. With `realtime`, two clocks decide what is dropped:
        * the client's pace, from the arrival times: audio sent more than `max_ahead_seconds` ahead
          of real time is a flood. A client that sends nothing for a while (push-to-talk, a hitch)
          owes nothing: the pace is measured again from its next chunk;
        * the session's own backlog, how long the chunk waited between its arrival (or, if it came
          early, the moment real time reached it) and this call: over THIN_LAG_SECONDS every other
          frame is fused, over MAX_LAG_SECONDS the chunk is dropped to catch up (a busy CPU). A
          caller that reads chunks as they come passes their arrival times."""
        now = time.perf_counter()
        arrived = now if arrived is None else arrived
        x = self._check(chunk, sample_rate)
        if len(x) == 0:
            return []
        self._thin = False
        if self.config.realtime:
            sent = (self.received + len(x)) / SAMPLE_RATE  # audio accepted so far, this chunk included
            if self._clock is None or sent < arrived - self._clock:  # first chunk, or the client fell behind
                self._clock = arrived - sent
            ahead = sent - (arrived - self._clock)
            if ahead > self.config.max_ahead_seconds:
                return self._drop(x, "flood", f"audio is arriving faster than real time ({ahead:.1f} s ahead of it); "
                                  "dropping what runs over (send chunks as they are recorded)")
            backlog = now - (arrived + ahead)  # audio sent early is due later than it came
            if backlog > MAX_LAG_SECONDS:
                return self._drop(x, "lag", f"the server is {backlog:.1f} s behind real time (a busy CPU); dropping audio "
                                  "to catch up")
            self._thin = backlog > THIN_LAG_SECONDS
        self._watch_level(x)
        x = self._hum(self._dc(x))  # as loading a file takes its DC offset and hum off (speech.audio)
        self._arrivals.append((self.received + len(x), arrived))
        self._samples.append((self.received, x))
        self.received += len(x)
        return self._emit(self.speech.push(x))

    def _drop(self, x: np.ndarray, cause: str, text: str) -> list[LiveFrame]:
        self.dropped += len(x)
        self._dropped_by[cause] += len(x)
        self._notice(cause, text)
        return []

    def finish(self) -> list[LiveFrame]:
        """The stream is over: the remaining frames (the clip's end read as `Pipeline.animate` reads it).
        Audio dropped on the way is summed up in one last notice (the notices themselves come at most
        every 10 s, so they cannot say how much)."""
        causes = {"flood": "sent faster than real time", "lag": "the server behind real time"}
        dropped = [f"{n / SAMPLE_RATE:.2f} s ({causes[c]})" for c, n in self._dropped_by.items() if n]
        if dropped:
            self.notices.append(f"audio dropped in this session: {', '.join(dropped)}")
        if self.received == 0:
            return []
        self._thin = False  # no clock to keep up with once the stream is over: the face ends on fused frames
        frames = self._emit(self.speech.finish(), final=True)
        return frames

    def set_expression(self, emotion: str, intensity: float = 1.0, mix_with: str | None = None, mix_ratio: float = 0.5) -> None:
        """Change the expression from the next frame on, eased in over 0.4 s. ValueError on a bad name or value."""
        self.expression.set(emotion, intensity, mix_with, mix_ratio, frame=self.emitted + len(self._held))

    @property
    def lookahead_seconds(self) -> float:
        """Audio after a frame's own that must arrive before the frame is out (encoder window + closure
        rule), nominal: the half-window of the last mel frame read adds 6-16 ms (`window_end`)."""
        return (self.config.lookahead + self.config.closure_lookahead) / FPS + self.config.edge_ms / 1000

    def window_end(self, t: int) -> int:
        """Samples that must have arrived before frame t is out (its own window, and frame t + 1's for the closure rule)."""
        return self.speech.window_end(t + self.config.closure_lookahead)

    def _check(self, chunk, sample_rate) -> np.ndarray:
        check_sample_rate(sample_rate)
        x = np.asarray(chunk)
        if x.ndim != 1:
            raise LiveInputError(f"live audio chunks must be mono (S,) arrays; got shape {x.shape} (mix the channels down)")
        if x.dtype == np.int16:
            return x.astype(np.float32) / 32768.0
        if not np.issubdtype(x.dtype, np.floating):
            raise LiveInputError(f"live audio must be float32 in [-1, 1] or int16 samples; got {x.dtype}")
        x = x.astype(np.float32, copy=False)
        if not np.isfinite(x).all():
            raise LiveInputError("the audio chunk has NaN or infinite samples; send finite samples in [-1, 1]")
        return np.clip(x, -1.0, 1.0)

    def _watch_level(self, x: np.ndarray) -> None:
        if np.mean(np.abs(x) >= CLIP_LEVEL) > CLIP_SHARE:
            self._notice("clipping", "the input is clipping (samples at full scale); lower the microphone gain")
        rms_db = 10 * np.log10(float(np.var(x, dtype=np.float64)) + 1e-12)  # about the chunk's mean: a DC offset is no sound
        if rms_db >= SILENCE_DBFS:
            self._quiet_since = self.received + len(x)
        elif (self.received + len(x) - self._quiet_since) / SAMPLE_RATE >= SILENCE_NOTICE_SECONDS:
            self._notice("silence", f"no sound for {SILENCE_NOTICE_SECONDS:g} s (below {SILENCE_DBFS:g} dBFS); "
                         "is the microphone muted? The face rests meanwhile")

    def _notice(self, kind: str, text: str) -> None:
        now = time.monotonic()
        if now - self._last_notice.get(kind, -1e9) >= NOTICE_INTERVAL_SECONDS:
            self._last_notice[kind] = now
            self.notices.append(text)
            logger.warning("live: %s", text)

    # ---- frames ----
    def _emit(self, decoded: list[tuple[int, np.ndarray, tuple[int, np.ndarray]]], final: bool = False) -> list[LiveFrame]:
        out = []
        for item in decoded:
            self._held.append(item)
            if len(self._held) == 1 + self.config.closure_lookahead:  # the closure rule reads frame t + 1 (if it looks ahead)
                out.append(self._frame(skip=self._thin and self._held[0][0] % 2 == 1))
        if final:
            while self._held:
                out.append(self._frame())
        return [f for f in out if f is not None]

    @torch.no_grad()
    def _frame(self, skip: bool = False) -> LiveFrame | None:
        """The oldest held frame, fused; skip: advance the states only (a session behind the clock)."""
        t0 = time.perf_counter()
        current = self._held.popleft()
        t, _, phones = current
        # The lips sealed at /p b m/ as the file path seals a clip, over frames t - 1, t and t + 1 (what
        # is held; each with the phone its own window read): frame t and the one after it, sealed.
        before_t = self._last_raw if self._last_raw is not None and self._last_raw[0] == t - 1 else None
        after_t = self._held[0] if self._held else None
        first, ids = phones
        if after_t is None and t + 1 - first < len(ids) and ids[t + 1 - first] in BILABIAL_IDS:
            # Frame t + 1 is not decoded yet (no closure look-ahead), but its /p b m/ is heard: with frame
            # t's shape standing in for it, the lips start meeting at t, as the file path's do.
            after_t = (t + 1, current[1], phones)
        window = [item for item in (before_t, current, after_t) if item is not None]
        sealed = seal_bilabials(np.stack([d for _, d, _ in window]), np.array([_phone(i) for i in window]), self.rig)
        k = int(before_t is not None)
        d_s = sealed[k]
        following = sealed[k + 1] if k + 1 < len(window) else d_s
        # The newest window read (frame t + 1's with the closure look-ahead) says which frames ahead are pauses.
        phones = self._held[-1][2] if self._held else phones
        before = self._last_ds if self._last_ds is not None else d_s
        self._last_ds, self._last_raw = d_s, current
        rig, dfm, dev = self.rig, self.pipe.dfm, self.pipe.device
        w_e = self.expression.frame(t)  # (52,)
        if skip:
            self._pause(t, phones)  # keeps the pause state
            self.head.frame(t, self._frame_samples(t))
            self.speech.seconds.pop(t, None)
            self.emitted = t + 1
            self.skipped += 1
            return None
        t1 = time.perf_counter()
        own_e = self._expression_displacement(w_e)
        ds = torch.from_numpy(d_s).to(dev)
        w_speech, cross_s = dfm.split(dfm.encode_speech(ds[None]))  # (1, K_s), (1, K_e)
        fused = (ds - dfm.decode_expression(cross_s)[0] + own_e).cpu().numpy()  # Pipeline.fuse, method "ours"
        # The emotion's lip-parting units yield where the speech closes the lips, except deep in a pause (Pipeline.closure_release).
        gaps = rig.lip_gap(rig.vertices[None] + np.stack([before, d_s, following]))  # (3,)
        pause = np.full(3, self._pause(t, phones))
        released = (w_e[None] - yield_to_closure(w_e[None].repeat(3, 0), gaps, self.names, pause)[1:2])[0]  # (52,)
        fused = fused - rig.displacement(released[None])[0]
        arkit = None
        if self.pipe.arkit is not None:
            # The label's own units with the speech half mapped, as the file path's export (`with_expression_units`).
            speech_units = self.pipe.arkit.with_expression_units(w_speech, torch.from_numpy(w_e[None]).to(w_speech))
            arkit = np.clip(speech_units.cpu().numpy()[0] - released, 0.0, 1.0).astype(np.float32)
        t2 = time.perf_counter()
        head, gaze = self.head.frame(t, self._frame_samples(t))
        if self.config.head_motion:  # the emotion's posture on the voice's motion, as the file path
            head, gaze = (a[0] for a in add_posture(head[None], gaze[None], self.expression.posture[None], self.head.cfg))
        else:
            head, gaze = np.zeros(3, np.float32), np.zeros(2, np.float32)
        t3 = time.perf_counter()
        self.emitted = t + 1
        arrived = self._arrival(t)
        return LiveFrame(t, t / FPS, (rig.vertices + fused).astype(np.float32), arkit, head, gaze, arrived=arrived,
                         ready=time.perf_counter(), stages={"speech": self.speech.seconds.pop(t, 0.0), "expression": t1 - t0, "dfm": t2 - t1,
                                 "head": t3 - t2})

    def _expression_displacement(self, w_e: np.ndarray) -> torch.Tensor:
        """One expression frame (52,) -> its displacement (V, 3) on the device, kept whole as
        `Pipeline.fuse(clean_expression=True)` keeps a label's; a few distinct frames are cached (a held
        emotion is one frame). No DFM encoding: the ARKit weights take the label's units as they are."""
        key = w_e.tobytes()
        if key in self._expr_cache:
            self._expr_cache.move_to_end(key)
            return self._expr_cache[key]
        value = torch.from_numpy(self.rig.displacement(w_e[None])[0].astype(np.float32)).to(self.pipe.device)  # (V, 3)
        self._expr_cache[key] = value
        if len(self._expr_cache) > EXPRESSION_CACHE:
            self._expr_cache.popitem(last=False)
        return value

    def _pause(self, t: int, phones: tuple[int, np.ndarray]) -> float:
        """How deep frame t lies in a pause (`pause_share`). phones = (first frame, (n,) ids): the newest
        window the speech stream read, frame t's look-ahead as it was then (so any chunking gives the
        same); frames past its end are silent (the clip's end). The phones of the last few frames, as
        read when each left, decide whether a phrase's onset still holds the pause's mouth."""
        window = self.config.lookahead + self.config.closure_lookahead
        first, ids = phones
        ahead = np.full(window + 1, SILENCE_ID)
        seen = ids[t - first:t - first + window + 1]
        ahead[:len(seen)] = seen
        past = np.array(self._history, dtype=bool).reshape(-1, 2)  # (H, 2) silent, bilabial
        silent = np.concatenate([past[:, 0], ahead == SILENCE_ID])
        bilabial = np.concatenate([past[:, 1], np.isin(ahead, BILABIAL_IDS)])
        share = float(pause_share(silent, bilabial, lookahead=window, since=self._silent)[len(past)])
        if len(self._history) == self._history.maxlen:  # the oldest leaves the history: count it
            left_silent = self._history[0][0]
            self._silent = (None if self._silent is None else self._silent + 1) if left_silent else 0
        self._history.append((bool(silent[len(past)]), bool(bilabial[len(past)])))
        return share

    def _frame_samples(self, t: int) -> np.ndarray:
        a, b = frame_start(t), frame_start(t + 1)
        while self._samples and self._samples[0][0] + len(self._samples[0][1]) <= a:
            self._samples.popleft()
        parts = [x[max(a - s, 0):max(b - s, 0)] for s, x in self._samples if s < b]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def _arrival(self, t: int) -> float:
        """When the audio that completed frame t's window arrived (the chunk holding its last needed sample)."""
        need = min(self.window_end(t), self.received)
        while len(self._arrivals) > 1 and self._arrivals[0][0] < need:
            self._arrivals.popleft()
        return self._arrivals[0][1] if self._arrivals else time.perf_counter()


def default_prior(path=None):
    """The live normalisations' starting point (`live_speech.SpeechPrior`): the prior pooled over
    many voices shipped in `assets/live/prior.json` (`live.prior`, built by
    tools/build_live_prior.py), or the file at `path`. If that file is missing or bad, the statistics
    of the shipped ARCTIC sentence, with a warning saying so. The stream's own audio takes over
    within seconds either way."""
    from ..speech.audio import load_audio
    from ..constants import ASSETS_DIR
    from .prior import PRIOR_PATH, load_prior
    from .speech_stream import speech_prior

    path = PRIOR_PATH if path is None else path
    try:
        return load_prior(path)
    except (OSError, ValueError) as err:
        logger.warning("live prior %s unusable (%s); starting from the ARCTIC sentence's statistics instead "
                       "(rebuild it with python tools/build_live_prior.py)", path, err)
    return speech_prior(load_audio(ASSETS_DIR / "audio" / "arctic_a0009.wav"))


def warm_up(pipe, prior=None) -> None:
    """Run a throwaway session over 0.5 s of quiet noise, so that a live stream's first frames do not
    pay for lazy initialisation (the first DFM and decoder calls take several times longer)."""
    session = live_session(pipe, config=LiveConfig(head_motion=False), prior=prior)
    noise = np.random.default_rng(0).normal(0.0, 1e-3, SAMPLE_RATE // 2).astype(np.float32)
    session.push(noise)
    session.finish()


def live_session(pipe, emotion: str = "neutral", intensity: float = 1.0, mix_with: str | None = None,
                 mix_ratio: float = 0.5, config: LiveConfig | None = None, prior=None) -> LiveSession:
    """A LiveSession on a loaded Pipeline (validated expression; ValueError names a bad value)."""
    return LiveSession(pipe, prior if prior is not None else default_prior(), config or LiveConfig(), emotion, intensity,
                       mix_with, mix_ratio)


def _phone(item: tuple[int, np.ndarray, tuple[int, np.ndarray]]) -> int:
    """A decoded frame's own phone id, as its window read it (the window always holds its own frame)."""
    t, _, (first, ids) = item
    return int(ids[t - first])
