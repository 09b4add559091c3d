"""The encoder as a live session runs it (`windowed_encode`), its distilled copy, and how sessions find it."""

import json
import logging

import numpy as np
import pytest
import torch

from blendtalk.constants import ASSETS_DIR
from blendtalk.live.speech_stream import StreamConfig, _EncoderStream
from blendtalk.models.stream_encoder import (STREAM_ENCODER_DIR, StreamEncoder, context_frames, fingerprint,
                                           load_stream_encoder, normalised_inputs, windowed_encode)
from blendtalk.models.faceformer import FaceFormer
from blendtalk.speech.phones import ARPABET
from blendtalk.training.stream_encoder import StreamEncoderTrainConfig, train_stream_encoder


@pytest.fixture(scope="module")
def speech():
    return FaceFormer.from_pretrained(ASSETS_DIR / "speech").eval()


def inputs(frames: int, seed: int = 0) -> torch.Tensor:
    """(T, F) encoder inputs: phone one-hots held a few frames each, then a log-mel that drifts."""
    rng = np.random.default_rng(seed)
    phones = np.repeat(rng.integers(len(ARPABET), size=frames // 4 + 1), 4)[:frames]
    mel = np.cumsum(rng.normal(0, 0.3, (frames, 80)), 0) - 4.0
    return torch.as_tensor(np.concatenate([np.eye(len(ARPABET))[phones], mel], 1), dtype=torch.float32)


def test_windowed_encoding_is_the_file_path_with_the_whole_clip_in_view(speech):
    enc, x = speech.audio_encoder, inputs(60)
    with torch.no_grad():
        full = enc(x[None], len(x))[0]
        torch.testing.assert_close(windowed_encode(enc, normalised_inputs(enc, x), len(x)), full, atol=2e-5, rtol=0)
        assert (windowed_encode(enc, normalised_inputs(enc, x), 2) - full).abs().max() > 0.05  # a short window differs


@pytest.mark.parametrize("lookahead", [1, 4])
def test_windowed_encoding_is_what_a_session_computes_frame_by_frame(speech, lookahead):
    """`_EncoderStream.frame` with the clip's own statistics as its prior, frame by frame, to the last."""
    enc, x = speech.audio_encoder, inputs(40, seed=1)
    mel = x[:, len(ARPABET):].numpy()
    prior = type("Prior", (), {"mel_mean": mel.mean(0), "mel_std": mel.std(0)})()
    stream, c = _EncoderStream(enc, prior, StreamConfig(lookahead=lookahead)), context_frames(enc)
    phones = x[:, :len(ARPABET)].argmax(1).numpy()
    with torch.no_grad():
        frames = torch.stack([stream.frame(t, phones[max(0, t - c):t + lookahead + 1], mel[max(0, t - c):t + lookahead + 1],
                                           max(0, t - c)) for t in range(len(x))])
        torch.testing.assert_close(frames, windowed_encode(enc, normalised_inputs(enc, x), lookahead), atol=2e-5, rtol=0)


def test_distillation_brings_the_window_closer_to_the_whole_clip(speech, tiny_corpus, tmp_path):
    config = StreamEncoderTrainConfig(data=str(tiny_corpus), out=str(tmp_path), lookaheads=[2, 4], steps=16, clips_per_step=4,
                                      val_every=16, device="cpu")
    run = train_stream_encoder(config, run_dir=tmp_path / "run")
    line = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["val"]
    # One held-out sentence: the mean over the windows, not each window, is what 16 steps reliably move.
    assert 0 < np.mean(list(line["relative_rms"].values())) < np.mean(list(line["teacher_windowed"].values()))
    student = StreamEncoder.from_pretrained(run / "best")
    assert student.config.lookaheads == [2, 4] and student.config.teacher == fingerprint(speech.audio_encoder)


def test_a_session_uses_the_copy_distilled_from_its_own_speech_model(speech, tmp_path, caplog):
    assert load_stream_encoder(speech, tmp_path / "none") is None  # nothing there: the model's own
    StreamEncoder.copy_of(speech.audio_encoder, [4]).save_pretrained(tmp_path / "ours")
    assert fingerprint(load_stream_encoder(speech, tmp_path / "ours")) == fingerprint(speech.audio_encoder)
    other = StreamEncoder.copy_of(speech.audio_encoder, [4])
    other.config.teacher = "0" * 64  # distilled from another speech model
    other.save_pretrained(tmp_path / "theirs")
    with caplog.at_level(logging.INFO, logger="blendtalk.models.stream_encoder"):
        assert load_stream_encoder(speech, tmp_path / "theirs") is None
    assert "another speech model" in caplog.text


def test_the_shipped_copy_belongs_to_the_shipped_speech_model_and_streams_closer():
    """A session on the shipped models lands closer to the file path with the copy than with the
    speech model's own encoder (ARCTIC, the default window and the 67 ms one). Retraining the speech
    model without distilling again would leave sessions on their own encoder: this fails then."""
    from blendtalk.live.session import LiveConfig, live_session
    from blendtalk.pipeline import Pipeline
    from blendtalk.speech.audio import load_audio

    pipe = Pipeline.from_pretrained(device="cpu")
    assert pipe.stream_encoder() is not None, f"{STREAM_ENCODER_DIR} is missing or was distilled from another " \
                                              "speech model: run python train/train_stream_encoder.py --publish"
    audio = load_audio(ASSETS_DIR / "audio" / "arctic_a0009.wav")
    file = pipe.animate(audio, emotion="surprised").vertices
    for window in ({"lookahead": 4}, {"lookahead": 2, "closure_lookahead": False}):
        distance = {}
        for distilled in (True, False):
            session = live_session(pipe, "surprised", config=LiveConfig(**window, stream_encoder=distilled))
            frames = [f for i in range(0, len(audio), 320) for f in session.push(audio[i:i + 320])] + session.finish()
            distance[distilled] = np.linalg.norm(np.stack([f.vertices for f in frames]) - file, axis=-1).mean()
        assert distance[True] < 0.95 * distance[False], (window, distance)  # 0.46 -> 0.31 mm and 0.64 -> 0.58 mm


def test_bad_settings_say_what_to_do():
    for bad in ({"lookaheads": []}, {"lookaheads": [40]}, {"steps": 0}, {"lr": 0.0}):
        with pytest.raises(ValueError):
            StreamEncoderTrainConfig(**bad)
