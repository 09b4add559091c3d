"""A live take saved as an mp4 (blendtalk.live.take): audio + the rendered ARKit face, validated paths."""

import subprocess

import numpy as np
import pytest

from blendtalk.constants import ASSETS_DIR, FPS, SAMPLE_RATE
from blendtalk.live.take import Take, take_animation
from blendtalk.speech.audio import load_audio

ARCTIC = ASSETS_DIR / "audio" / "arctic_a0009.wav"


@pytest.fixture(scope="module")
def pipe():
    from blendtalk.pipeline import Pipeline

    return Pipeline.from_pretrained(device="cpu")


@pytest.fixture(scope="module")
def take(pipe):
    audio = load_audio(ARCTIC)[: SAMPLE_RATE]  # 1 s: 30 frames
    session, take = pipe.live(emotion="happy"), None
    take = Take(session.arkit_names)
    for i in range(0, len(audio), 320):
        chunk = (audio[i:i + 320] * 32767).astype(np.int16)  # int16 as the page sends
        take.add_audio(chunk)
        take.add_frames(session.push(chunk))
    take.add_frames(session.finish())
    return take


def test_the_take_is_the_face_a_client_draws(pipe, take):
    anim = take.animation(pipe.rig)
    assert anim.num_frames == 30 and len(anim.audio) == SAMPLE_RATE
    # The rig driven by the sent weights: the mouth moves while the speech does.
    gap = pipe.rig.lip_gap(anim.vertices)
    assert gap.max() - gap.min() > 2e-3
    np.testing.assert_allclose(anim.vertices[5], pipe.rig.vertices + pipe.rig.displacement(take.arkit[5][None])[0], atol=1e-6)


def test_take_written_as_mp4_with_audio(pipe, take, tmp_path):
    import imageio_ffmpeg

    path = take.write_mp4(pipe, tmp_path / "take.mp4", size=128)
    frames, seconds = imageio_ffmpeg.count_frames_and_secs(str(path))
    assert frames == 30 and seconds == pytest.approx(1.0, abs=0.05)
    probe = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True)
    assert "Audio: aac" in probe.stderr and "Video: h264" in probe.stderr
    with pytest.raises(ValueError, match="exists already"):  # an earlier take is never overwritten
        take.write_mp4(pipe, path, size=128)


@pytest.mark.parametrize("name, size, message", [("take.avi", 128, "must end in .mp4"), ("missing/take.mp4", 128, "does not exist"),
                                                 ("take.mp4", 300, "size must be one of")])
def test_bad_take_paths_and_sizes(pipe, take, tmp_path, name, size, message):
    with pytest.raises(ValueError, match=message):
        take.write_mp4(pipe, tmp_path / name, size=size)
    assert list(tmp_path.iterdir()) == []


def test_empty_or_foreign_takes_are_refused(pipe, take):
    with pytest.raises(ValueError, match="no frames"):
        Take(take.names).animation(pipe.rig)
    with pytest.raises(ValueError, match="not this rig's"):
        take_animation(pipe.rig, take.names[::-1], take.audio(), np.stack(take.arkit))
    with pytest.raises(ValueError, match="head angles"):
        take_animation(pipe.rig, take.names, take.audio(), np.stack(take.arkit), head=np.zeros((3, 3)))


def test_skipped_frames_are_held_and_the_video_follows_the_audio(pipe, take):
    """A busy session skips frames (LiveSession.skipped) and a stopped one may lack its last few."""
    gappy = Take(take.names)
    gappy.add_audio(take.audio())
    F = type("F", (), {})
    for i, (a, h, g) in enumerate(zip(take.arkit, take.head, take.gaze)):
        if i % 2 == 0 and i < 20:  # every other frame, then nothing after frame 19
            frame = F()
            frame.index, frame.arkit, frame.head_rotation, frame.gaze = i, a, h, g
            gappy.add_frames([frame])
    anim = gappy.animation(pipe.rig)
    assert anim.num_frames == 30
    np.testing.assert_array_equal(anim.arkit_weights[3], take.arkit[2])
    np.testing.assert_array_equal(anim.arkit_weights[29], take.arkit[18])


def test_a_take_stays_within_its_cap(take):
    capped = Take(take.names, max_seconds=0.5)
    capped.add_audio(take.audio())
    capped.add_frames([type("F", (), {"arkit": a, "head_rotation": h, "gaze": g}) for a, h, g in zip(take.arkit, take.head, take.gaze)])
    assert capped.samples == SAMPLE_RATE // 2 and len(capped.arkit) == int(0.5 * FPS)


def test_cli_refuses_a_bad_take_path_before_streaming(tmp_path, capsys):
    from blendtalk.cli import main

    (tmp_path / "old.mp4").write_bytes(b"an earlier take")
    assert main(["live", "--input", str(ARCTIC), "--save-mp4", str(tmp_path / "old.mp4")]) == 2
    assert "exists already" in capsys.readouterr().err
    assert (tmp_path / "old.mp4").read_bytes() == b"an earlier take"
    assert main(["live", "--input", str(ARCTIC), "--save-csv", str(tmp_path / "take.txt")]) == 2
