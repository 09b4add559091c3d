"""Live mode (blendtalk.live): chunking does not change the frames, streamed ~ file path, lips close,
bad input gets one clear line, memory stays bounded."""

import numpy as np
import pytest
import torch

from blendtalk.speech.audio import load_audio
from blendtalk.constants import ASSETS_DIR, FPS, SAMPLE_RATE
from blendtalk.live import session as live_session
from blendtalk.live.session import EXPRESSION_CACHE, LiveConfig, LiveInputError

ARCTIC = ASSETS_DIR / "audio" / "arctic_a0009.wav"


@pytest.fixture(scope="module")
def pipe():
    from blendtalk.pipeline import Pipeline

    return Pipeline.from_pretrained(device="cpu")


@pytest.fixture(scope="module")
def arctic():
    return load_audio(ARCTIC)


def stream(session, audio, chunk):
    frames = []
    for i in range(0, len(audio), chunk):
        frames += session.push(audio[i:i + chunk])
    return frames + session.finish()


def test_any_chunk_size_gives_the_same_frames(pipe, arctic):
    audio = arctic[: SAMPLE_RATE]  # 1 s: 30 frames
    runs = [stream(pipe.live(emotion="happy"), audio, chunk) for chunk in (1, 320, 777, len(audio))]
    for frames in runs:
        assert [f.index for f in frames] == list(range(30))
    for frames in runs[1:]:
        np.testing.assert_array_equal(np.stack([f.vertices for f in frames]), np.stack([f.vertices for f in runs[0]]))
        np.testing.assert_array_equal(np.stack([f.arkit for f in frames]), np.stack([f.arkit for f in runs[0]]))
        np.testing.assert_array_equal(np.stack([f.head_rotation for f in frames]), np.stack([f.head_rotation for f in runs[0]]))


def test_int16_chunks_equal_float_chunks(pipe, arctic):
    audio = arctic[: SAMPLE_RATE // 2]
    pcm = np.round(audio * 32768).clip(-32768, 32767).astype(np.int16)
    a = stream(pipe.live(), pcm.astype(np.float32) / 32768, 640)
    b = stream(pipe.live(), pcm, 640)
    np.testing.assert_array_equal(np.stack([f.vertices for f in a]), np.stack([f.vertices for f in b]))


def test_streamed_file_is_close_to_the_file_path_and_closes_the_lips(pipe, arctic):
    from blendtalk.evaluation.lipsync import bilabial_closure
    from blendtalk.speech.phones import read_phone_labels

    anim = pipe.animate(arctic, emotion="neutral")
    frames = stream(pipe.live(emotion="neutral"), arctic, 320)
    v = np.stack([f.vertices for f in frames])
    assert v.shape == anim.vertices.shape
    distance_mm = np.linalg.norm(v - anim.vertices, axis=-1).mean() * 1e3
    assert distance_mm <= 0.5, distance_mm
    phones = read_phone_labels(ARCTIC.with_suffix(".phones.txt"))
    streamed = bilabial_closure(pipe.rig.lip_gap(v), phones)["bilabial_closure"]
    file_path = bilabial_closure(pipe.rig.lip_gap(anim.vertices), phones)["bilabial_closure"]
    assert streamed >= 0.95 * file_path, (streamed, file_path)
    assert np.isfinite(np.stack([f.arkit for f in frames])).all()
    a = np.stack([f.arkit for f in frames])
    assert a.min() >= 0 and a.max() <= 1 and a.shape == (len(frames), 52)


def test_an_open_mouthed_emotion_keeps_its_mouth_in_a_pause_streamed_as_in_the_file_path(pipe, arctic):
    """Speech, 1.2 s of silence, speech again, surprised: deep in the pause the dropped jaw is back in
    both paths (the lips do not close and reopen before a phrase that opens on /hh/), the /p b m/ still close."""
    from blendtalk.evaluation.lipsync import bilabial_closure
    from blendtalk.speech.phones import Phone, read_phone_labels

    audio = np.concatenate([arctic, np.zeros(int(1.2 * SAMPLE_RATE), np.float32), arctic])
    anim = pipe.animate(audio, emotion="surprised")
    v = np.stack([f.vertices for f in stream(pipe.live(emotion="surprised"), audio, 320)])
    assert np.linalg.norm(v - anim.vertices, axis=-1).mean() * 1e3 <= 0.5
    end = len(arctic) / SAMPLE_RATE
    pause = slice(round((end + 0.4) * FPS), round((end + 1.0) * FPS))
    onset = slice(round((end + 1.2) * FPS) - 3, round((end + 1.2) * FPS) + 1)
    for gap in (pipe.rig.lip_gap(anim.vertices), pipe.rig.lip_gap(v)):
        assert gap[pause].min() > 10e-3  # mm: about surprise's 2 cm, against 0 for neutral
        assert gap[onset].min() > 5e-3
        phones = read_phone_labels(ARCTIC.with_suffix(".phones.txt"))
        later = [Phone(p.symbol, p.start + end + 1.2, p.end + end + 1.2) for p in phones]
        assert bilabial_closure(gap, list(phones) + later)["bilabial_closure"] >= 0.9
    neutral = pipe.rig.lip_gap(pipe.animate(audio, emotion="neutral").vertices)
    assert neutral[pause].max() < 1e-3


def test_without_the_closure_frame_the_lips_start_meeting_before_a_heard_closure(pipe, arctic):
    """The 67 ms window does not decode frame t + 1 before frame t leaves, but its phones are heard:
    where they say /p b m/, surprise's dropped jaw yields a frame early, as in the file path. Frame 24
    holds the onset of ARCTIC's /p/ (0.815 s); the file path's lips there are 3.8 mm apart (the jaw
    yielded), and the stream's were 29 mm apart before it read the heard phone."""
    config = LiveConfig(lookahead=2, closure_lookahead=False, blinks=False, head_motion=False)
    audio = arctic[: SAMPLE_RATE]
    gaps = {e: pipe.rig.lip_gap(np.stack([f.vertices for f in stream(pipe.live(emotion=e, config=config), audio, 320)]))
            for e in ("neutral", "surprised")}
    assert gaps["surprised"][22] > gaps["neutral"][22] + 15e-3  # open speech: surprise's jaw is there
    assert gaps["surprised"][24] < gaps["neutral"][24] + 2e-3  # before the /p/: it has given way


def test_frames_leave_after_the_lookahead(pipe, arctic):
    session = pipe.live()
    out = []
    for i in range(0, SAMPLE_RATE, 160):  # 10 ms chunks
        out.append(len(session.push(arctic[i:i + 160])))
    first = int(np.argmax(np.array(out) > 0))  # chunk index (10 ms) of the first frame out
    assert first * 0.01 <= session.lookahead_seconds + 1 / FPS + 0.03
    assert sum(out) >= 30 - session.config.lookahead - 3


LOW_LATENCY = LiveConfig(lookahead=1, edge_ms=20.0, closure_lookahead=False)  # 53 ms: a short window's code paths


def test_a_finer_window_gives_the_same_frames_for_any_chunking(pipe, arctic):
    audio = arctic[: SAMPLE_RATE]
    runs = [stream(pipe.live(emotion="happy", config=LOW_LATENCY), audio, chunk) for chunk in (160, 777, len(audio))]
    for frames in runs:
        assert [f.index for f in frames] == list(range(30))
    for frames in runs[1:]:
        np.testing.assert_array_equal(np.stack([f.vertices for f in frames]), np.stack([f.vertices for f in runs[0]]))
    default = stream(pipe.live(emotion="happy"), audio, 320)
    assert np.abs(np.stack([f.vertices for f in default]) - np.stack([f.vertices for f in runs[0]])).max() > 0  # it reads less


@pytest.mark.parametrize("config", [LiveConfig(), LiveConfig(lookahead=2, closure_lookahead=False), LOW_LATENCY],
                         ids=["default", "2-frames-no-closure-frame", "1-frame-20ms"])
def test_each_frame_leaves_with_the_chunk_that_completes_its_window(pipe, arctic, config):
    from blendtalk.live.speech_stream import frame_start, needed_samples

    session = pipe.live(config=config)
    out_at = {}
    for i in range(0, SAMPLE_RATE, 160):  # 10 ms chunks
        for f in session.push(arctic[i:i + 160]):
            out_at[f.index] = i + 160
    assert len(out_at) >= 20
    for t, at in out_at.items():
        end = session.window_end(t)
        assert end <= at < end + 160, (t, end, at)  # not a chunk later than its window allows
        overhang = end - frame_start(t + 1) - round(session.lookahead_seconds * SAMPLE_RATE)
        assert 0 <= overhang <= 256, (t, overhang)  # the last mel frame's half window, at most
    if config.closure_lookahead and config.edge_ms == 0:
        assert session.window_end(7) == needed_samples(7 + config.lookahead + 1)


def test_a_window_finer_than_a_frame_is_checked():
    from blendtalk.live.speech_stream import StreamConfig, edge_mels, mel_span

    with pytest.raises(ValueError, match="edge_ms"):
        StreamConfig(lookahead=1, edge_ms=40.0)
    for t in range(12):
        a, b = mel_span(t)
        counts = [edge_mels(t, ms) for ms in (0.0, 10.0, 20.0, 33.3)]
        assert counts[0] == 0 and counts == sorted(counts) and counts[-1] == b - a, (t, counts)


def test_expression_changes_ease_in(pipe, arctic):
    audio = arctic[: SAMPLE_RATE]
    session = pipe.live(emotion="neutral", config=LiveConfig(blinks=False, head_motion=False))
    frames = []
    col = pipe.rig.blendshape_names.index("mouthSmileLeft")
    for i in range(0, len(audio), 1600):
        frames += session.push(audio[i:i + 1600])
        if i == 4800:
            session.set_expression("happy", 1.0)
    smile = [session.expression.target[col]]
    assert smile[0] > 0.3
    with pytest.raises(ValueError, match="emotion"):
        session.set_expression("hapy")


def test_the_emotion_posture_rides_on_the_live_head_motion_and_eases_in(pipe, arctic):
    from blendtalk.expression.emotions import emotion_posture

    audio = arctic[: SAMPLE_RATE]  # 30 frames
    neutral = stream(pipe.live(emotion="neutral"), audio, 1600)
    sad = stream(pipe.live(emotion="sad"), audio, 1600)
    turn = np.degrees(np.stack([f.head_rotation for f in sad]) - np.stack([f.head_rotation for f in neutral]))
    np.testing.assert_allclose(turn, np.tile(emotion_posture("sad")[:3], (30, 1)), atol=1e-3)  # as the file path
    session = pipe.live(emotion="neutral")
    frames = []
    for i in range(0, len(audio), 1600):
        frames += session.push(audio[i:i + 1600])
        if i == 4800:
            session.set_expression("sad")
    frames += session.finish()
    pitch = np.degrees([f.head_rotation[0] - n.head_rotation[0] for f, n in zip(frames, neutral)])
    assert abs(pitch[0]) < 1e-3 and abs(pitch[-1] - emotion_posture("sad")[0]) < 1e-3
    assert np.all(np.diff(pitch) > -1e-3)  # eased in, never back


def test_bad_input_gets_one_clear_line(pipe):
    session = pipe.live()
    with pytest.raises(LiveInputError, match="16000 Hz"):
        session.push(np.zeros(320, np.float32), sample_rate=44100)
    with pytest.raises(LiveInputError, match="mono"):
        session.push(np.zeros((320, 2), np.float32))
    with pytest.raises(LiveInputError, match="int16"):
        session.push(np.zeros(320, np.int32))
    with pytest.raises(LiveInputError, match="NaN"):
        session.push(np.full(320, np.nan, np.float32))
    session.push(np.ones(3200, np.float32))  # full scale: clipping
    assert any("clipping" in n for n in session.notices)
    for _ in range(30):  # 6 s of digital silence
        session.push(np.zeros(3200, np.float32))
    assert any("no sound" in n for n in session.notices)


def test_flood_faster_than_real_time_is_dropped_with_a_notice(pipe, arctic):
    session = pipe.live(config=LiveConfig(realtime=True, max_ahead_seconds=0.5))
    assert session.push(arctic[:1600]) == []  # 0.1 s: accepted (no frame complete yet)
    assert session.push(arctic[1600:SAMPLE_RATE * 2]) == []  # 1.9 s more at once: too far ahead of the clock
    assert session.dropped == SAMPLE_RATE * 2 - 1600 and session.received == 1600
    assert any("faster than real time" in n for n in session.notices)


class Clock:
    """The session's clock, set by a test (`time.perf_counter` and `time.monotonic` of live.session)."""

    now = 1000.0

    @classmethod
    def perf_counter(cls) -> float:
        return cls.now

    monotonic = perf_counter


def push_in_real_time(session, audio, first: int, stop: int, sent_at: float, read_late: float, chunk: int = 320):
    """Chunks of audio[first:stop], sent in real time from `sent_at` and each read `read_late` s after it came."""
    frames = []
    for i in range(first, stop, chunk):
        arrived = sent_at + (i + chunk - first) / SAMPLE_RATE
        Clock.now = arrived + read_late
        frames += session.push(audio[i:i + chunk], arrived=arrived)
    return frames


def test_a_session_behind_the_clock_thins_frames_but_not_its_end(pipe, arctic, monkeypatch):
    """Audio read half a second after it came (a busy CPU) has every other frame skipped; once the
    stream is over there is no clock to keep up with, so the frames its end completes are all fused."""
    monkeypatch.setattr(live_session, "time", Clock)
    session = pipe.live(config=LiveConfig(realtime=True))
    thinned = push_in_real_time(session, arctic, 0, SAMPLE_RATE, 1000.0, 0.5)
    assert session.skipped > 0 and session.dropped == 0
    assert all(b.index - a.index == 2 for a, b in zip(thinned, thinned[1:]))
    end = session.finish()
    assert len(end) > 2 and [f.index for f in end] == list(range(end[0].index, 30))  # 1 s at 30 frames/s


def test_audio_read_over_a_second_late_is_dropped_and_summed_up_at_the_end(pipe, arctic, monkeypatch):
    monkeypatch.setattr(live_session, "time", Clock)
    session = pipe.live(config=LiveConfig(realtime=True))
    push_in_real_time(session, arctic, 0, 3200, 1000.0, 0.0)
    assert push_in_real_time(session, arctic, 3200, 19200, 1000.2, 2.0) == []  # read 2 s after it came: dropped
    assert session.dropped == 16000 and any("behind real time" in n for n in session.notices)
    session.finish()
    assert session.notices[-1] == "audio dropped in this session: 1.00 s (the server behind real time)"


def test_a_pause_in_sending_is_not_a_lag(pipe, arctic, monkeypatch):
    """A client that stops sending for a while (push-to-talk, an engine's hitch) and then goes on in
    real time loses nothing: the pause is not the server falling behind, and what follows is no flood."""
    monkeypatch.setattr(live_session, "time", Clock)
    session = pipe.live(config=LiveConfig(realtime=True))
    push_in_real_time(session, arctic, 0, 8000, 1000.0, 0.01)  # 0.5 s in real time, read as it comes,
    push_in_real_time(session, arctic, 8000, 32000, 1003.0, 0.01)  # nothing for 2.5 s, then 1.5 s more
    assert session.dropped == 0 and session.skipped == 0 and session.received == 32000
    assert not any("behind" in n or "faster" in n for n in session.notices), list(session.notices)


@pytest.mark.slow
def test_memory_stays_bounded_over_a_long_stream(pipe, arctic):
    """45 s of speech and pauses: every buffer keeps its size, pocketsphinx restarts its utterance."""
    rng = np.random.default_rng(0)
    session = pipe.live()
    sizes = []
    for k in range(15):
        piece = np.concatenate([arctic, 0.001 * rng.standard_normal(SAMPLE_RATE // 2).astype(np.float32)])
        for i in range(0, len(piece), 640):
            session.push(piece[i:i + 640])
        s = session.speech
        sizes.append((len(s.mel.buffer), len(s.features), len(session._samples), len(session._arrivals),
                      len(session._expr_cache), len(s.phones.segments)))
    sizes = np.array(sizes)
    assert (sizes[5:, 0] <= SAMPLE_RATE).all()  # under a second of samples held
    assert (sizes[5:, 1:4].max(0) <= sizes[:5, 1:4].max(0) + 2).all(), sizes  # no growth past the first 5 rounds
    assert sizes[:, 4].max() <= EXPRESSION_CACHE  # blinks make new expression frames; the cache keeps the newest
    assert sizes[:, 5].max() < 600  # phones of one utterance (<= 30 s), not of the whole stream
    assert session.speech.phones.utt_start > 0  # the recogniser restarted at a pause
    assert session.speech.caches[0].keys.shape[2] == pipe.speech_model.config.window
    assert torch.is_grad_enabled()


@pytest.mark.gpu
def test_a_session_on_cuda_gives_the_cpu_frames(pipe, arctic):
    """eval/live_latency.py --device cuda: the same checkpoints on the GPU stream the CPU's frames
    (phones and mels stay on the CPU; only float rounding differs)."""
    from blendtalk.pipeline import Pipeline

    audio = arctic[: SAMPLE_RATE]
    gpu = Pipeline.from_pretrained(device="cuda")
    on_gpu = stream(gpu.live(emotion="happy"), audio, 320)
    on_cpu = stream(pipe.live(emotion="happy"), audio, 320)
    assert [f.index for f in on_gpu] == [f.index for f in on_cpu]
    distance = np.linalg.norm(np.stack([f.vertices for f in on_gpu]) - np.stack([f.vertices for f in on_cpu]), axis=-1)
    assert distance.mean() < 1e-5  # m: 0.01 mm
