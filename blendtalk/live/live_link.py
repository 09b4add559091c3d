"""Unreal's Live Link fed as the Live Link Face app feeds it: one UDP datagram per frame.

    python -m blendtalk live --input mic --emit livelink://192.168.1.20 --subject blendtalk

Unreal's Live Link plugin with its "Apple ARKit Face" support (the "LiveLinkFace" source that the
iPhone app talks to, port 11111) then lists the subject, and a MetaHuman or any face set up for
Live Link Face plays it; nothing of ours runs inside Unreal. The app's packet, all big-endian:

    uint8   version (6)
    int32   length, then that many UTF-8 bytes: the device id
    int32   length, then that many UTF-8 bytes: the subject name
    int32   frame, float32 subframe, int32 rate numerator, int32 rate denominator: the timecode
            (FQualifiedFrameTime: frames since midnight at 30/1)
    uint8   61, then 61 float32: the 52 curves in Unreal's EARFaceBlendShape order (`CURVES`),
            then HeadYaw, HeadPitch, HeadRoll, LeftEyeYaw, LeftEyePitch, LeftEyeRoll, RightEyeYaw,
            RightEyePitch, RightEyeRoll in radians with Live Link Face's signs (render/exports.py)

The layout is that of Unreal's reader (AppleARKitFaceSupport, packet version 6) as open
reimplementations of the app describe it; tests/test_live_link.py decodes it field by field.
"""

from __future__ import annotations

import socket
import struct
import time

import numpy as np

from ..constants import FPS
from ..render.exports import LIVE_LINK_FACE_NAMES, LIVE_LINK_FACE_ROTATIONS, live_link_rotations

PORT = 11111  # where Unreal's Live Link Face source listens unless told otherwise
PACKET_VERSION = 6
MAX_NAME_BYTES = 255  # Unreal's reader bounds each name at 256 characters


def _enum_order(names: tuple[str, ...]) -> tuple[str, ...]:
    """The CSV's column order -> Unreal's enum order: the two differ only in JawLeft/JawRight and MouthLeft/MouthRight."""
    order = list(names)
    for a, b in (("JawRight", "JawLeft"), ("MouthRight", "MouthLeft")):
        i, j = order.index(a), order.index(b)
        order[i], order[j] = order[j], order[i]
    return tuple(order)


CURVES = _enum_order(LIVE_LINK_FACE_NAMES)  # EARFaceBlendShape 0..51


def packet(values: np.ndarray, subject: str, device_id: str, seconds_of_day: float) -> bytes:
    """61 values (CURVES then LIVE_LINK_FACE_ROTATIONS) and the frame's time of day -> one datagram."""
    values = np.asarray(values, dtype=">f4").reshape(-1)
    if len(values) != len(CURVES) + len(LIVE_LINK_FACE_ROTATIONS):
        raise ValueError(f"a Live Link Face packet has {len(CURVES) + len(LIVE_LINK_FACE_ROTATIONS)} values, got {len(values)}")
    frames = seconds_of_day * FPS
    whole = int(frames)
    head = struct.pack(">B", PACKET_VERSION)
    for text in (device_id, subject):
        raw = text.encode("utf-8")
        head += struct.pack(">i", len(raw)) + raw
    head += struct.pack(">ifiiB", whole, frames - whole, FPS, 1, len(values))
    return head + values.tobytes()


def check_subject(subject: str) -> str:
    """The subject name Unreal lists: printable, 1..255 UTF-8 bytes; ValueError otherwise."""
    if not subject or not subject.isprintable() or len(subject.encode("utf-8")) > MAX_NAME_BYTES:
        raise ValueError(f"--subject must be 1 to {MAX_NAME_BYTES} printable characters, got {subject!r}")
    return subject


class LiveLinkSender:
    """Sends `LiveFrame`s to host:port as Live Link Face packets; ValueError at once for a host that
    does not resolve. The timecode is the wall clock's time of day when the sender was made plus each
    frame's t, so frames keep their spacing however they are batched. UDP needs no connection:
    Unreal may start, stop or restart while frames are sent.
    """

    def __init__(self, host: str, port: int = PORT, subject: str = "blendtalk"):
        self.subject = check_subject(subject)
        self.device_id = f"blendtalk@{socket.gethostname()}"[:MAX_NAME_BYTES]
        try:
            family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        except (socket.gaierror, UnicodeError, OverflowError) as err:
            raise ValueError(f"--emit livelink://{host}:{port}: cannot resolve the host ({err})") from None
        self.address = address
        self._socket = socket.socket(family, kind, proto)
        self._names, self._columns = None, None
        local = time.localtime()
        self._start = time.time() - time.mktime(local[:3] + (0, 0, 0) + local[6:])  # s since local midnight
        self.sent = 0

    def values(self, frame, names) -> np.ndarray:
        """(61,) float32: the frame's curves in CURVES order (clipped to [0, 1]), then its rotations.
        names: the ARKit names of `frame.arkit` (`LiveSession.arkit_names`), any order and case; curves
        it lacks are sent as 0."""
        if names is not self._names:  # one session's names: matched once
            where = {name.lower(): i for i, name in enumerate(names)}
            self._names, self._columns = names, np.array([where.get(name.lower(), -1) for name in CURVES])
        curves = np.zeros(len(CURVES), dtype=np.float32)
        if frame.arkit is not None:
            known = self._columns >= 0
            curves[known] = np.clip(np.asarray(frame.arkit, dtype=np.float32)[self._columns[known]], 0.0, 1.0)
        rotations = live_link_rotations(1, frame.head_rotation[None], frame.gaze[None])[0]
        return np.concatenate([curves, rotations])

    def send(self, frame, names) -> None:
        data = packet(self.values(frame, names), self.subject, self.device_id, (self._start + frame.t) % 86400.0)
        try:
            self._socket.sendto(data, self.address)
            self.sent += 1
        except OSError:  # a network that went away: the stream goes on, the engine misses frames
            pass

    def close(self) -> None:
        self._socket.close()
