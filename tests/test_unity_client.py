"""The Unity component (blendtalk/clients/unity/BlendtalkLive.cs), compiled with Mono against a
stand-in UnityEngine (tests/unity/UnityEngine.cs: Unity's documented quaternion conventions) and
run on the stream of `python -m blendtalk live`: blendshapes by name, head and eyes turned as
blendtalk turns them, mirrored into Unity's axes."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from blendtalk.evaluation.browser import free_port
from blendtalk.constants import ASSETS_DIR, SAMPLE_RATE
from blendtalk.expression.head_motion import rotation_matrix
from blendtalk.face.dressing import gaze_rotation

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "blendtalk" / "clients" / "unity" / "BlendtalkLive.cs"
needs_mono = pytest.mark.skipif(not (shutil.which("mcs") and shutil.which("mono")),
                                reason="Mono (mcs, mono) is not installed: apt-get install mono-mcs mono-runtime")


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    exe = tmp_path_factory.mktemp("unity") / "harness.exe"
    sources = [CLIENT, ROOT / "tests" / "unity" / "UnityEngine.cs", ROOT / "tests" / "unity" / "Harness.cs"]
    done = subprocess.run(["mcs", "-nologo", "-warnaserror", f"-out:{exe}", "-r:System.dll", *map(str, sources)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return exe


@needs_mono
@pytest.mark.slow  # a blendtalk process and a Mono one
def test_the_unity_component_plays_the_stream_on_shapes_head_and_eyes(harness, tmp_path):
    import soundfile as sf

    from blendtalk.speech.audio import load_audio

    short = tmp_path / "short.wav"
    sf.write(short, load_audio(ASSETS_DIR / "audio" / "arctic_a0009.wav")[: 2 * SAMPLE_RATE], SAMPLE_RATE)
    port, lines = free_port(), tmp_path / "frames.jsonl"
    with open(lines, "w") as stdout:  # a file, not a pipe: the frames outgrow a pipe's buffer before they are read
        live = subprocess.Popen([sys.executable, "-m", "blendtalk", "live", "--input", str(short), "--emit", "stdout",
                                 "--emit", f"ws://127.0.0.1:{port}", "--token", "tok", "--wait-client", "--emotion", "happy"],
                                cwd=ROOT, stdout=stdout, stderr=subprocess.PIPE, text=True)
        try:
            # The harness does not retry: wait for the server's line before connecting.
            while "waiting for a client" not in live.stderr.readline():
                assert live.poll() is None, live.stderr.read()[-2000:]
            unity = subprocess.run(["mono", str(harness), f"ws://127.0.0.1:{port}/?token=tok", "60"],
                                   capture_output=True, text=True, timeout=120)
            live.communicate(timeout=120)
        finally:
            live.kill()
    assert unity.returncode == 0 and "the stream ended" in unity.stderr, unity.stderr
    sent = {m["frame"]: m for m in map(json.loads, lines.read_text().splitlines()) if m["type"] == "frame"}
    shown = [json.loads(line) for line in unity.stdout.splitlines()]
    assert len(shown) >= 5 and shown[-1]["frame"] == max(sent), (len(shown), shown[-1]["frame"], max(sent))
    mirror = np.diag([-1.0, 1.0, 1.0])  # blendtalk's +x is the face's left, Unity's the character's right
    for s in shown:
        frame = sent[s["frame"]]
        # "Face.jawOpen", "blendShape1.MouthSmileLeft", "eyeBlinkLeft" found by name, weights x100; "notArkit" untouched
        assert s["jaw"] == pytest.approx(100 * frame["arkit"]["jawOpen"], abs=1e-3)
        assert s["smile"] == pytest.approx(100 * frame["arkit"]["mouthSmileLeft"], abs=1e-3)
        assert s["blink"] == pytest.approx(100 * frame["arkit"]["eyeBlinkLeft"], abs=1e-3) and not s["other"]
        head = mirror @ rotation_matrix(np.array(frame["head"], np.float64))
        eye = gaze_rotation(torch.tensor(frame["eyes"], dtype=torch.float64)).numpy().reshape(3, 3)
        np.testing.assert_allclose(s["nose"], head @ [0, 0, 1], atol=1e-5)
        np.testing.assert_allclose(s["crown"], head @ [0, 1, 0], atol=1e-5)
        np.testing.assert_allclose(s["gaze"], head @ eye @ [0, 0, 1], atol=1e-5)
    turned = np.array([s["nose"] for s in shown])
    assert np.ptp(turned[:, 0]) > 1e-3, "the head never turned"


@needs_mono
def test_a_bad_url_a_wrong_token_or_no_server_is_one_line_in_status(harness):
    from blendtalk.live.stream import WebSocketBroadcast

    server = WebSocketBroadcast("127.0.0.1", free_port(), token="right").start()
    try:
        for url, words in (("http://127.0.0.1:1/", "must start with ws://"),
                           (f"ws://127.0.0.1:{server.port}/?token=wrong", "closed the stream: missing or wrong token"),
                           (f"ws://127.0.0.1:{free_port()}/?token=x", "no stream at")):
            unity = subprocess.run(["mono", str(harness), url, "5"], capture_output=True, text=True, timeout=60)
            assert unity.returncode == 1 and words in unity.stderr and "Exception" not in unity.stderr, unity.stderr
    finally:
        server.close()

