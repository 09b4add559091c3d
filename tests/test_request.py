"""One request object: every input checked once, in one place, before any slow work."""

import dataclasses

import numpy as np
import pytest

from blendtalk.constants import ASSETS_DIR, SAMPLE_RATE
from blendtalk.request import MAX_TEXT_CHARS, MAX_TRANSCRIPT_CHARS, AnimationRequest, check_speech

WAV = ASSETS_DIR / "audio" / "arctic_a0009.wav"


def test_a_request_is_frozen_and_holds_what_was_checked(rig, tmp_path):
    ref = tmp_path / "ref.npy"
    np.save(ref, np.full((5, rig.num_blendshapes), 0.2, np.float32))
    req = AnimationRequest.create(WAV, transcript="  He turned sharply. ", emotion="Happy", mix_with=" ", timeline="",
                                  reference=ref, seed=7, size=256, rig=rig)
    assert req.audio.dtype == np.float32 and req.audio.ndim == 1 and req.text is None
    assert req.transcript == "He turned sharply." and req.expression.emotion == "happy"
    assert req.expression.mix_with is None and req.expression.timeline is None and req.seed == 7
    assert req.reference.shape == (5, rig.num_vertices, 3) and req.size == 256
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.size = 512


@pytest.mark.parametrize("kwargs, message", [
    (dict(), "no speech"),
    (dict(text="   "), "no speech"),
    (dict(audio=WAV, text="hello"), "not both"),
    (dict(text="x" * (MAX_TEXT_CHARS + 1)), f"limit is {MAX_TEXT_CHARS}"),
    (dict(text="hi", transcript="x" * (MAX_TRANSCRIPT_CHARS + 1)), "transcript"),
    (dict(text="hi", method="average"), "unknown method"),
    (dict(text="hi", size=32), r"video size must be an integer number of pixels in \[64, 2048\]"),
    (dict(text="hi", size=256.0), "video size"),
    (dict(text="hi", head_motion="false"), "head_motion must be true or false"),
    (dict(text="hi", emotion="joyful"), "unknown emotion"),
    (dict(text="hi", intensity="1"), "intensity must be a finite number"),
    (dict(text="hi", seed=-1), "seed must be an integer"),
    (dict(text="hi", reference="nowhere.npy"), "does not exist"),
    (dict(audio=np.zeros(SAMPLE_RATE, np.float32)), "silent"),
])
def test_bad_inputs_are_refused_with_what_to_change(kwargs, message, rig):
    with pytest.raises(ValueError, match=message):
        AnimationRequest.create(rig=rig, **kwargs)


def test_check_speech_reads_no_file_when_asked_not_to(tmp_path):
    missing = tmp_path / "not_there.wav"
    assert check_speech(missing, None, " ", load=False) == (missing, None, None)
    with pytest.raises(ValueError, match="not found"):
        check_speech(missing)
