"""`python -m blendtalk animate` end to end (issue 6): the ARCTIC clip -> mp4 + exports, TTS, and bad input.

The CLI runs in-process (`main([...])`). Successful runs share one Pipeline (a module fixture put
in place of `Pipeline.from_pretrained`), so the renderer is built once. Every bad input must give
exit code 2, one line on stderr, and leave the output folder as it was, before any model loads.
"""

import csv
import json
import os
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from blendtalk.speech.audio import MAX_SECONDS, num_frames
from blendtalk.cli import main
from blendtalk.constants import ASSETS_DIR, FPS, SAMPLE_RATE
from blendtalk.expression.emotions import EMOTIONS
from blendtalk.render.exports import LIVE_LINK_FACE_NAMES, LIVE_LINK_FACE_ROTATIONS
from blendtalk.pipeline import Pipeline
from blendtalk.speech.phonetics import PhoneAligner
from blendtalk.render.video import probe

WAV = ASSETS_DIR / "audio" / "arctic_a0009.wav"
TRANSCRIPT = (ASSETS_DIR / "audio" / "arctic_a0009.txt").read_text().strip()
SIZE = 128  # px: small frames keep the render cheap on CPU
ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # root ignores file permissions


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    return Pipeline.from_pretrained(device="cpu")


@pytest.fixture
def shared_pipe(pipe, monkeypatch):
    """Pipeline.from_pretrained returns the module's pipeline; records the arguments it was called with."""
    calls = []

    def from_pretrained(cls, **kwargs):
        calls.append(kwargs)
        return pipe

    monkeypatch.setattr(Pipeline, "from_pretrained", classmethod(from_pretrained))
    return calls


def glb_document(path: Path) -> tuple[dict, int]:
    """Parse a binary glTF: its JSON document and the length of its BIN chunk; checks the framing."""
    data = path.read_bytes()
    magic, version, total = struct.unpack_from("<4sII", data, 0)
    assert (magic, version, total) == (b"glTF", 2, len(data))
    json_len, json_kind = struct.unpack_from("<I4s", data, 12)
    assert json_kind == b"JSON"
    doc = json.loads(data[20 : 20 + json_len])
    bin_len, bin_kind = struct.unpack_from("<I4s", data, 20 + json_len)
    assert bin_kind == b"BIN\0" and 28 + json_len + bin_len == len(data)
    return doc, bin_len


@pytest.mark.slow
def test_animate_arctic_video_and_exports(tmp_path, shared_pipe, pipe, capsys):
    out, exports = tmp_path / "out" / "clip.mp4", tmp_path / "out" / "exports"
    out.parent.mkdir()
    rc = main(["animate", str(WAV), "--transcript", TRANSCRIPT, "--timeline", "neutral@0 surprised@1.5",
               "--size", str(SIZE), "-o", str(out), "--export-dir", str(exports), "--device", "cpu", "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    (kwargs,) = shared_pipe
    assert isinstance(kwargs.pop("aligner"), PhoneAligner)  # made first, to recognise the phones while models load
    assert kwargs == {"dfm": None, "speech": None, "device": "cpu"}
    report = json.loads(captured.out)
    seconds = sf.info(str(WAV)).duration
    frames = num_frames(sf.info(str(WAV)).frames)
    assert report["frames"] == frames == 93 and report["speech_driver"] in ("visemes", "faceformer")
    assert set(report["timings_s"]) >= {"audio front end", "speech model", "dfm", "render", "encode"}

    # The video: both streams, each as long as the audio to within a frame.
    info = probe(out)
    assert info["video"]["codec"] == "h264" and (info["video"]["width"], info["video"]["height"]) == (SIZE, SIZE)
    assert info["audio"]["codec"] == "aac" and info["audio"]["sample_rate"] == SAMPLE_RATE
    assert info["video"]["frames"] == frames and info["moov_first"]
    for stream in ("video", "audio"):
        assert abs(info[stream]["duration"] - seconds) <= 1 / FPS, (stream, info[stream]["duration"], seconds)

    # The exports load back with T frames each.
    vertices = np.load(exports / "animation.npy", allow_pickle=False)
    assert vertices.shape == (frames, pipe.rig.num_vertices, 3) and vertices.dtype == np.float32
    with zipfile.ZipFile(exports / "animation_obj.zip") as z:
        names = sorted(n for n in z.namelist() if n.endswith(".obj"))
        assert len(names) == frames and names[0] == "frame_0000.obj"
        lines = z.read(names[-1]).decode().splitlines()
    v = np.array([line.split()[1:] for line in lines if line.startswith("v ")], dtype=np.float64)
    assert v.shape == (pipe.rig.num_vertices, 3)
    np.testing.assert_allclose(v, vertices[-1], atol=2e-6)
    assert sum(line.startswith("f ") for line in lines) == len(pipe.rig.triangles)
    with open(exports / "animation_arkit.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["Timecode", "BlendShapeCount", *LIVE_LINK_FACE_NAMES, *LIVE_LINK_FACE_ROTATIONS]
    assert len(rows) - 1 == frames and all(len(r) == len(rows[0]) for r in rows)
    assert rows[1][0] == "00:00:00:00.000" and rows[-1][0] == "00:00:03:02.000"  # frame 92 at 30 fps
    curves = np.array([r[2:54] for r in rows[1:]], dtype=np.float64)  # (T, 52)
    assert ((curves >= 0) & (curves <= 1)).all()
    brow = curves[:, LIVE_LINK_FACE_NAMES.index("BrowInnerUp")]
    assert brow[60:].mean() > brow[:45].mean() + 0.1  # surprise from 1.5 s raises the brows
    doc, bin_len = glb_document(exports / "animation.glb")
    primitive = doc["meshes"][0]["primitives"][0]
    assert len(primitive["targets"]) == frames and doc["asset"]["extras"]["frames"] == frames
    # The dressed face: the rig's vertices, then teeth, tongue, lashes, hair and eyes, with vertex colours.
    assert doc["accessors"][0]["count"] == pipe.dressing().num_vertices > pipe.rig.num_vertices
    assert "COLOR_0" in primitive["attributes"] and doc["buffers"][0]["byteLength"] == bin_len
    arkit = json.loads((exports / "animation_arkit.json").read_text())
    assert len(arkit["frames"]) == frames and len(arkit["names"]) == 52
    # Head motion is on by default: the head and eye columns move, in radians of a few degrees.
    rotations = np.array([r[54:] for r in rows[1:]], dtype=np.float64)  # (T, 9)
    assert 0.003 < np.abs(rotations[:, :3]).max() < np.radians(6) and np.abs(rotations[:, 3:5]).max() > 0.003
    np.testing.assert_allclose(rotations[:, 3:5], rotations[:, 6:8])  # both eyes look the same way
    assert np.array(arkit["head_rotation"]).shape == (frames, 3) and np.array(arkit["gaze"]).shape == (frames, 2)

    # Nothing else was left behind (no temporary files), and the finished outputs are not overwritten.
    assert sorted(p.name for p in out.parent.iterdir()) == ["clip.mp4", "exports"]
    assert sorted(p.name for p in exports.iterdir()) == sorted(
        ["animation.npy", "animation_obj.zip", "animation.glb", "animation_arkit.csv", "animation_arkit.json"])
    before = out.stat().st_mtime_ns, out.stat().st_size
    again = ["animate", str(WAV), "--size", str(SIZE), "-o", str(out), "--quiet"]
    assert main(again) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert main(again[:-3] + ["-o", str(tmp_path / "out" / "other.mp4"), "--export-dir", str(exports)]) == 2
    assert "already holds exports" in capsys.readouterr().err
    assert (out.stat().st_mtime_ns, out.stat().st_size) == before and len(shared_pipe) == 1


def _espeak_available() -> bool:
    try:
        from blendtalk.speech.tts import EspeakTTS

        EspeakTTS()
        return True
    except (ImportError, OSError, RuntimeError):
        return False


@pytest.mark.skipif(not _espeak_available(), reason="eSpeak NG (espeakng-loader) not installed")
@pytest.mark.slow
def test_animate_text_replaces_an_existing_video_with_overwrite(tmp_path, shared_pipe, capsys):
    out = tmp_path / "speech.mp4"
    out.write_bytes(b"an older video")
    rc = main(["animate", "--text", "Thank you, see you soon.", "--emotion", "happy", "--method", "interpolation",
               "--size", str(SIZE), "-o", str(out), "--overwrite", "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = json.loads(captured.out)
    info = probe(out)
    seconds = report["seconds"]
    assert seconds > 0.5 and info["video"]["frames"] == report["frames"] == round(seconds * FPS)
    for stream in ("video", "audio"):
        assert abs(info[stream]["duration"] - seconds) <= 1 / FPS
    assert [p.name for p in tmp_path.iterdir()] == ["speech.mp4"]


@pytest.mark.slow
def test_an_interrupt_during_the_exports_says_what_was_written(tmp_path, shared_pipe, monkeypatch, capsys):
    """Ctrl-C while the exports are written: the video is whole and stays, each export is whole or
    absent, and the one line says which are there (not "no partial files")."""
    import blendtalk.render.exports as exports

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setitem(exports._WRITERS, "arkit_csv", interrupted)  # after npy, obj and glb
    out, folder = tmp_path / "clip.mp4", tmp_path / "exports"
    rc = main(["animate", str(WAV), "--size", str(SIZE), "-o", str(out), "--export-dir", str(folder), "--quiet"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 130 and len(lines) == 1, lines
    assert f"the video {out} is complete" in lines[0]
    assert "animation.npy, animation_obj.zip, animation.glb" in lines[0]
    assert probe(out)["video"]["frames"] > 0
    assert sorted(p.name for p in folder.iterdir()) == ["animation.glb", "animation.npy", "animation_obj.zip"]


def test_emotions_lists_every_emotion(capsys):
    assert main(["emotions"]) == 0
    assert capsys.readouterr().out.split() == list(EMOTIONS)


# ---- bad input: exit 2, one line, nothing written, nothing loaded ----

@pytest.fixture
def inputs(tmp_path):
    """A folder of bad (and one good) inputs."""
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    (folder / "talk.wav").write_text(TRANSCRIPT)  # text under an audio name
    (folder / "corrupt.wav").write_bytes(WAV.read_bytes()[:30])  # the header cut off mid-way
    (folder / "noise.wav").write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    (folder / "empty.wav").write_bytes(b"")
    (folder / "folder.wav").mkdir()
    sf.write(folder / "no_samples.wav", np.zeros(0, np.float32), SAMPLE_RATE)
    sf.write(folder / "silent.wav", np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE)
    # Over-long but cheap: 121 s at 1 kHz is 242 kB; the length is refused from the header.
    rate = 1000
    sf.write(folder / "long.wav", 0.1 * rng.standard_normal(int((MAX_SECONDS + 1) * rate)), rate, subtype="PCM_16")
    (folder / "locked.wav").write_bytes(WAV.read_bytes())
    (folder / "locked.wav").chmod(0)
    np.save(folder / "ref_51.npy", np.zeros((10, 51), np.float32))
    (folder / "a_file").write_text("not a folder")
    (folder / "exports").mkdir()
    (folder / "exports" / "animation.npy").write_bytes(b"earlier run")
    return folder


def _bad_cases():
    """(id, argv after 'animate' given (inputs folder, output path), expected text in the message, skip reason)."""
    ok = str(WAV)
    cuda = torch.cuda.is_available()
    return [
        ("missing audio", lambda i, o: [str(i / "nope.wav"), "-o", o], "not found", None),
        ("audio is a folder", lambda i, o: [str(i / "folder.wav"), "-o", o], "not a file", None),
        ("unreadable audio", lambda i, o: [str(i / "locked.wav"), "-o", o], "Could not read", "root reads any file" if ROOT else None),
        ("corrupt audio", lambda i, o: [str(i / "corrupt.wav"), "-o", o], "corrupt, truncated or not audio", None),
        ("random bytes", lambda i, o: [str(i / "noise.wav"), "-o", o], "Could not read", None),
        ("text named .wav", lambda i, o: [str(i / "talk.wav"), "-o", o], "Could not read talk.wav", None),
        ("text file", lambda i, o: [str(WAV.with_suffix(".txt")), "-o", o], "Unsupported audio format '.txt'", None),
        ("zero bytes", lambda i, o: [str(i / "empty.wav"), "-o", o], "empty (0 bytes)", None),
        ("zero samples", lambda i, o: [str(i / "no_samples.wav"), "-o", o], "no audio samples", None),
        ("silent audio", lambda i, o: [str(i / "silent.wav"), "-o", o], "silent", None),
        ("over-long audio", lambda i, o: [str(i / "long.wav"), "-o", o], f"at most {MAX_SECONDS:g} s", None),
        ("no speech", lambda i, o: ["-o", o], "a speech file or --text", None),
        ("speech and text", lambda i, o: [ok, "--text", "hello", "-o", o], "a speech file or --text", None),
        ("empty text", lambda i, o: ["--text", "  ", "-o", o], "--text is empty", None),
        ("unknown emotion", lambda i, o: [ok, "--emotion", "joyful", "-o", o], "valid emotions: " + ", ".join(EMOTIONS), None),
        ("unknown mix emotion", lambda i, o: [ok, "--mix", "bored", "-o", o], "unknown second emotion (to mix in) 'bored'", None),
        ("intensity above", lambda i, o: [ok, "--intensity", "1.6", "-o", o], "intensity must be a finite number in [0, 1.5]", None),
        ("intensity below", lambda i, o: [ok, "--intensity", "-0.1", "-o", o], "intensity must be", None),
        ("intensity nan", lambda i, o: [ok, "--intensity", "nan", "-o", o], "intensity must be", None),
        ("mix ratio", lambda i, o: [ok, "--mix", "sad", "--mix-ratio", "1.5", "-o", o], "mix ratio (the share of the second emotion)", None),
        ("timeline number", lambda i, o: [ok, "--timeline", "happy@soon", "-o", o], "bad number in timeline token", None),
        ("timeline token", lambda i, o: [ok, "--timeline", "happy", "-o", o], "bad timeline token 'happy'", None),
        ("timeline order", lambda i, o: [ok, "--timeline", "happy@2 sad@1", "-o", o], "times must increase", None),
        ("timeline emotion", lambda i, o: [ok, "--timeline", "neutral@0 elated@1", "-o", o], "unknown emotion in the timeline 'elated'", None),
        ("timeline intensity", lambda i, o: [ok, "--intensity", "1.2", "--timeline", "sad@0:1.5", "-o", o], "timeline entry sad@0", None),
        ("timeline past the end", lambda i, o: [ok, "--timeline", "neutral@0 happy@10", "-o", o],
         "timeline entry happy@10 starts after the speech ends (3.1 s)", None),
        ("mix ratio without mix", lambda i, o: [ok, "--mix-ratio", "0.9", "-o", o], "give --mix EMOTION too", None),
        ("reference shape", lambda i, o: [ok, "--reference", str(i / "ref_51.npy"), "-o", o], "has shape (10, 51)", None),
        ("reference missing", lambda i, o: [ok, "--reference", str(i / "none.npy"), "-o", o], "does not exist", None),
        ("size", lambda i, o: [ok, "--size", "32", "-o", o], "video size must be an integer number of pixels in [64, 2048]", None),
        ("seed negative", lambda i, o: [ok, "--seed", "-1", "-o", o], "seed must be an integer in [0, 4294967295]", None),
        ("seed too big", lambda i, o: [ok, "--seed", str(2**32), "-o", o], "seed must be an integer", None),
        ("device name", lambda i, o: [ok, "--device", "gpu", "-o", o], "unknown device 'gpu'", None),
        ("device missing", lambda i, o: [ok, "--device", "cuda", "-o", o], "no CUDA GPU", "CUDA present" if cuda else None),
        ("output suffix", lambda i, o: [ok, "-o", o[:-4] + ".avi"], "must end in .mp4", None),
        ("output under a file", lambda i, o: [ok, "-o", str(i / "a_file" / "x.mp4")], "does not exist; create it first", None),
        ("output folder missing", lambda i, o: [ok, "-o", str(Path(o).parent / "new" / "x.mp4")], "does not exist", None),
        ("output in /proc", lambda i, o: [ok, "-o", "/proc/blendtalk_test.mp4"], "not writable",
         None if sys.platform.startswith("linux") and Path("/proc/self").is_dir() else "no /proc"),
        ("output read-only", lambda i, o: [ok, "-o", str(i / "readonly" / "x.mp4")], "not writable", "root writes anywhere" if ROOT else None),
        ("export dir under a file", lambda i, o: [ok, "-o", o, "--export-dir", str(i / "a_file" / "exp")], "cannot be created", None),
        ("export dir is a file", lambda i, o: [ok, "-o", o, "--export-dir", str(i / "a_file")], "is a file", None),
        ("export dir holds exports", lambda i, o: [ok, "-o", o, "--export-dir", str(i / "exports")], "already holds exports", None),
    ]


@pytest.fixture
def no_models(monkeypatch):
    """Bad input must be refused before any model is loaded."""
    def refuse(cls, **kwargs):
        raise AssertionError("Pipeline.from_pretrained ran before the input was validated")

    monkeypatch.setattr(Pipeline, "from_pretrained", classmethod(refuse))


@pytest.mark.parametrize("name, argv, message, skip", _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_bad_input_exit_2_one_line_nothing_written(name, argv, message, skip, inputs, tmp_path, no_models, capsys):
    if skip:
        pytest.skip(skip)
    if name == "output read-only":
        (inputs / "readonly").mkdir()
        (inputs / "readonly").chmod(0o555)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    listing = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    rc = main(["animate", *argv(inputs, str(out_dir / "clip.mp4")), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("blendtalk: error: "), err
    assert message in lines[0]
    # Nothing new or changed anywhere under the test's folders: no .mp4, no temporary files, no export dir.
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == listing


def test_output_that_is_a_folder_is_refused(tmp_path, no_models, capsys):
    (tmp_path / "clip.mp4").mkdir()
    assert main(["animate", str(WAV), "-o", str(tmp_path / "clip.mp4"), "--overwrite", "--quiet"]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert list((tmp_path / "clip.mp4").iterdir()) == []


def test_bad_reference_content_is_one_line(tmp_path, no_models, capsys):
    (tmp_path / "ref.npy").write_text("just text")
    assert main(["animate", str(WAV), "--reference", str(tmp_path / "ref.npy"), "-o", str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read the reference expression ref.npy" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.npy"]


def test_usage_errors_exit_2(capsys):
    """argparse's own errors (bad number, unknown method, unknown option) also exit with 2, in one line
    that names the option and where the help is, without the usage block."""
    for argv, what in ((["animate", str(WAV), "--intensity", "lots"], "argument --intensity: invalid float value: 'lots'"),
                       (["animate", str(WAV), "--method", "average"], "argument --method: invalid choice: 'average'"),
                       (["live", "--input", str(WAV), "--threads", "two"], "argument --threads: invalid int value"),
                       (["animate", str(WAV), "--colour", "red"], "unrecognized arguments: --colour red")):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and what in lines[0] and lines[0].endswith("--help)"), lines


def test_help_shows_each_default_once(capsys):
    """Defaults the help text already names are not repeated, and options with none show none."""
    for command in ("animate", "live"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        assert "(default: None)" not in text and "(default: [])" not in text
        assert "when available) (default" not in text and "then shipped) (default" not in text
        assert "(default: neutral)" in text  # --emotion's, which its help does not name


def test_no_head_motion_flag_reaches_the_pipeline(tmp_path, monkeypatch, capsys):
    """--no-head-motion and --seed reach the pipeline's request (stopped there: no models, no files)."""
    from blendtalk import pipeline

    seen = {}

    class Stop(Exception):
        pass

    def fake_run(self, request, progress=None):
        seen["request"] = request
        raise Stop

    monkeypatch.setattr(pipeline.Pipeline, "from_pretrained", classmethod(lambda cls, **kw: cls(rig=None)))
    monkeypatch.setattr(pipeline.Pipeline, "run", fake_run)
    for argv, want in (([], (True, 0)), (["--no-head-motion", "--seed", "9"], (False, 9))):
        with pytest.raises(Stop):
            main(["animate", str(WAV), "-o", str(tmp_path / "x.mp4"), "--quiet", *argv])
        assert (seen["request"].head_motion, seen["request"].seed) == want
    assert not (tmp_path / "x.mp4").exists()