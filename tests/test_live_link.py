"""Live Link Face packets for Unreal: the byte layout, the curve order and signs, a loopback UDP
stream and `python -m blendtalk live --emit livelink://...`."""

import json
import socket
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from blendtalk.constants import ASSETS_DIR, SAMPLE_RATE
from blendtalk.live.live_link import CURVES, LiveLinkSender, check_subject, packet
from blendtalk.render.exports import LIVE_LINK_FACE_NAMES

ROOT = Path(__file__).resolve().parents[1]
ARKIT = [n[0].lower() + n[1:] for n in LIVE_LINK_FACE_NAMES]  # camelCase, as the sessions name them


def decode(data: bytes) -> dict:
    """Unreal's reading of a Live Link Face packet (version 6), written from its field list."""
    at = 0

    def take(fmt):
        nonlocal at
        out = struct.unpack_from(fmt, data, at)
        at += struct.calcsize(fmt)
        return out

    (version,) = take(">B")
    names = []
    for _ in range(2):
        (length,) = take(">i")
        names.append(data[at:at + length].decode("utf-8"))
        at += length
    frame, subframe, numerator, denominator, count = take(">ifiiB")
    values = take(f">{count}f")
    assert at == len(data), "bytes after the last value"
    return {"version": version, "device": names[0], "subject": names[1], "frame": frame, "subframe": subframe,
            "rate": (numerator, denominator), "values": np.array(values)}


def _frame(t=0.0, weights=None, head=(0.0, 0.0, 0.0), gaze=(0.0, 0.0)):
    arkit = np.zeros(len(ARKIT), np.float32)
    for name, w in (weights or {}).items():
        arkit[ARKIT.index(name)] = w
    return SimpleNamespace(index=round(t * 30), t=t, arkit=arkit, head_rotation=np.array(head, np.float32),
                           gaze=np.array(gaze, np.float32))


def test_the_packet_follows_unreals_layout_order_and_signs():
    sender = LiveLinkSender("127.0.0.1", 9, subject="Ada")
    try:
        values = sender.values(_frame(weights={"jawLeft": 0.3, "mouthLeft": 0.6, "tongueOut": 1.4},
                                      head=(0.1, 0.2, 0.3), gaze=(0.05, 0.04)), ARKIT)
    finally:
        sender.close()
    got = decode(packet(values, "Ada", "dev-1", 3600.5))
    assert got["version"] == 6 and got["device"] == "dev-1" and got["subject"] == "Ada" and got["rate"] == (30, 1)
    assert got["frame"] == 3600 * 30 + 15 and got["subframe"] == pytest.approx(0.0, abs=1e-3)
    v = got["values"]
    assert len(v) == 61
    # Unreal's EARFaceBlendShape: JawLeft 15, MouthLeft 21, TongueOut 51 (clipped to 1), then the angles
    assert v[15] == pytest.approx(0.3) and v[21] == pytest.approx(0.6) and v[51] == 1.0
    assert np.count_nonzero(v[:52]) == 3 and CURVES[15] == "JawLeft" and CURVES[16] == "JawRight"
    # HeadYaw, HeadPitch, HeadRoll, then each eye's yaw, pitch, roll: Live Link Face's signs
    np.testing.assert_allclose(v[52:], [-0.2, 0.1, 0.3, -0.05, -0.04, 0, -0.05, -0.04, 0], atol=1e-6)
    assert sorted(CURVES) == sorted(LIVE_LINK_FACE_NAMES)


def test_frames_arrive_over_udp_with_their_timecode():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(10)
        sender = LiveLinkSender("127.0.0.1", rx.getsockname()[1])
        try:
            for i in range(5):
                sender.send(_frame(t=i / 30, weights={"jawOpen": i / 10}), ARKIT)
            got = [decode(rx.recv(2048)) for _ in range(5)]
        finally:
            sender.close()
    jaw = CURVES.index("JawOpen")
    assert [g["values"][jaw] for g in got] == pytest.approx([0, 0.1, 0.2, 0.3, 0.4])
    ticks = [g["frame"] + g["subframe"] for g in got]
    assert np.diff(ticks) == pytest.approx([1.0] * 4, abs=1e-3)  # one frame apart at 30/1, however fast they were sent
    assert {g["subject"] for g in got} == {"blendtalk"} and sender.sent == 5


def test_bad_live_link_input_gets_one_clear_line():
    for subject in ("", "a\nb", "x" * 300):
        with pytest.raises(ValueError, match="--subject"):
            check_subject(subject)
    with pytest.raises(ValueError, match="cannot resolve"):
        LiveLinkSender("no such host.invalid", 11111)
    with pytest.raises(ValueError, match="61 values"):
        packet(np.zeros(52), "a", "b", 0.0)


@pytest.mark.slow  # a new Python process
def test_cli_live_sends_every_frame_to_live_link_beside_stdout(tmp_path):
    import soundfile as sf

    from blendtalk.speech.audio import load_audio

    short = tmp_path / "short.wav"
    sf.write(short, load_audio(ASSETS_DIR / "audio" / "arctic_a0009.wav")[:SAMPLE_RATE], SAMPLE_RATE)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        port = rx.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "blendtalk", "live", "--input", str(short), "--emit", "stdout",
                              "--emit", f"livelink://127.0.0.1:{port}", "--subject", "Ada", "--emotion", "happy"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        rx.settimeout(1)
        packets = []
        try:
            while True:
                packets.append(decode(rx.recv(2048)))
        except socket.timeout:
            pass
    frames = [json.loads(line) for line in out.stdout.splitlines()]
    frames = [m for m in frames if m["type"] == "frame"]
    assert len(packets) == len(frames) > 0 and {p["subject"] for p in packets} == {"Ada"}
    smile = CURVES.index("MouthSmileLeft")
    for p, m in zip(packets, frames):
        assert p["values"][smile] == pytest.approx(m["arkit"]["mouthSmileLeft"], abs=1e-4)
        assert p["values"][52] == pytest.approx(-m["head"][1], abs=1e-4)  # HeadYaw
    assert "Live Link" in out.stderr
