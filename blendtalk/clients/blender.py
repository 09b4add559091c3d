"""blendtalk for Blender: a take's ARKit curves as shape-key animation, and the live stream on a face.

A Blender add-on in one file (Blender 4.2 or later). It runs on Blender's own Python, so it uses the
standard library and `bpy` only, and imports `bpy` where it drives Blender: the take reader, the
rotations and the WebSocket client work (and are tested) without Blender.

    python -m blendtalk blender-addon OUT_DIR     # writes blendtalk_blender.py and blendtalk_face.glb

In Blender: Edit > Preferences > Add-ons > Install from Disk... > blendtalk_blender.py. The panel
is in the 3D view's sidebar (N), tab "blendtalk". To try it on blendtalk's own face, File > Import >
glTF 2.0 > blendtalk_face.glb: a "head" empty (at the neck pivot) holding "face", "left_eye" and
"right_eye", each with the 52 ARKit units as shape keys. Any mesh whose shape keys carry ARKit
names (jawOpen, JawOpen, any case) works the same way; a character's armature (selected, or the
one deforming the selected mesh) lends its head and eye bones (Head, mixamorig:Head, LeftEye, eye.L,
CC_Base_R_Eye, ...), turned in their own axes whichever way the rig's bones point.

* **Import take**: `animation_arkit.json` or `animation_arkit.csv` (Live Link Face layout) from
  `python -m blendtalk animate SPEECH.wav --export-dir DIR` (or a live take saved with --save-csv):
  keyframes on the selected meshes' shape keys from the current frame, at the scene's frame rate
  set to the take's; the head's and eyes' rotations onto the head and eye objects; the speech
  beside it (NAME.wav or NAME.mp4 for NAME_arkit.*, as the app names its downloads) as a sound strip.
* **Live**: `python -m blendtalk live --input mic --emit ws://127.0.0.1:8765` prints the URL with its
  token; paste it and Connect. The newest frame is applied up to 60 times a second; with Record
  on, every frame is also keyframed at its own frame number (from the current frame).

Rotations follow `docs/live.md`: head [pitch, yaw, roll] about the neck, R = R_yaw R_pitch R_roll;
eyes [yaw, pitch] in the head. blendtalk's axes (+x the face's left, +y up, +z out of the face,
glTF's) are Blender's +x, +z, -y, as Blender's glTF importer converts them (a character faces -y).
The head turns about its origin (blendtalk's face: the neck pivot) or its bone's head. An object's
or bone's rotation when blendtalk first drives it is its rest (kept in its custom property
"blendtalk_rest"): rotations go on top of it.

(No `from __future__ import annotations` here: Blender reads its properties from class annotations.)
"""

import base64
import csv
import hashlib
import json
import math
import os
import socket
import struct
import threading
from urllib.parse import urlsplit

bl_info = {
    "name": "blendtalk",
    "author": "blendtalk",
    "version": (1, 0, 0),
    "blender": (4, 2, 0),
    "location": "3D View > Sidebar > blendtalk",
    "description": "Speech-driven facial animation from blendtalk: import takes, drive a face live",
    "category": "Animation",
}

FORMAT, VERSION = "blendtalk-live", 1  # the live frame format this client reads (docs/live.md)
FPS = 30.0  # blendtalk's frame rate; a CSV whose timecodes say otherwise keeps its own
LIVE_LINK_ROTATIONS = ("HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll",
                       "RightEyeYaw", "RightEyePitch", "RightEyeRoll")
PAGE_EYES = ("EyeYaw", "EyePitch")  # the live page's Save writes one pair of eye angles instead of Live Link Face's six
_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455's accept-key constant
_MAX_MESSAGE = 1 << 20  # bytes: a frame message is about 2 kB; anything this large is not one


# ---- takes ----------------------------------------------------------------------------------------
def read_take(path: str) -> dict:
    """A blendtalk ARKit export -> {"fps", "names" (K,), "frames" (T, K), "head" (T, 3) [pitch, yaw,
    roll] or None, "eyes" (T, 2) [yaw, pitch] or None}, lists of floats, radians.

    path: `*_arkit.json` ({"fps", "names", "frames", "head_rotation", "gaze"}) or a Live Link Face
    CSV (Timecode, BlendShapeCount, 52 PascalCase curves, head and eye rotations), as the CLI writes
    it, or as the live page's Save does (the rig's curve names, HeadPitch, HeadYaw, HeadRoll, EyeYaw,
    EyePitch). ValueError with a line saying what is wrong for anything else."""
    if path.lower().endswith(".json"):
        with open(path, encoding="utf-8") as f:
            try:
                doc = json.load(f)
            except json.JSONDecodeError as err:
                raise ValueError(f"{os.path.basename(path)} is not JSON ({err.msg}); pick a blendtalk *_arkit.json") from None
        if not isinstance(doc, dict) or not {"fps", "names", "frames"} <= set(doc):
            raise ValueError(f"{os.path.basename(path)} has no fps, names and frames: not a blendtalk *_arkit.json")
        take = {"fps": float(doc["fps"]), "names": [str(n) for n in doc["names"]],
                "frames": [[float(w) for w in row] for row in doc["frames"]],
                "head": _rows(doc.get("head_rotation"), 3), "eyes": _rows(doc.get("gaze"), 2)}
    elif path.lower().endswith(".csv"):
        take = _read_live_link_csv(path)
    else:
        raise ValueError(f"{os.path.basename(path)}: a take is a blendtalk *_arkit.json or *_arkit.csv file")
    width = len(take["names"])
    if not width or any(len(row) != width for row in take["frames"]):
        raise ValueError(f"{os.path.basename(path)}: every frame must have one weight per name ({width})")
    if not (0 < take["fps"] <= 1000):
        raise ValueError(f"{os.path.basename(path)}: fps must be positive, got {take['fps']}")
    return take


def _rows(value, width: int):
    if value is None:
        return None
    rows = [[float(x) for x in row] for row in value]
    if any(len(row) != width for row in rows):
        raise ValueError(f"rotation rows must have {width} values")
    return rows


def _read_live_link_csv(path: str) -> dict:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0][:2] != ["Timecode", "BlendShapeCount"]:
        raise ValueError(f"{os.path.basename(path)} does not start with Timecode,BlendShapeCount: not a Live Link Face CSV")
    header = rows[0]
    rotations = LIVE_LINK_ROTATIONS + PAGE_EYES
    curves = [i for i, name in enumerate(header[2:], 2) if name not in rotations]
    where = {name: i for i, name in enumerate(header)}
    body = [row for row in rows[1:] if row]
    try:
        frames = [[float(row[i]) for i in curves] for row in body]
        rotation = {name: [float(row[where[name]]) for row in body] for name in rotations if name in where}
    except (ValueError, IndexError):
        raise ValueError(f"{os.path.basename(path)}: a row has a missing or non-numeric value") from None
    # Live Link Face's yaw and eye pitch run the other way from blendtalk's (render/exports.py says how
    # that was found); the live page's CSVs of 2026-12-06 (EyeYaw, EyePitch) carry blendtalk's signs.
    flip = -1.0 if "LeftEyeYaw" in rotation or "EyeYaw" not in rotation else 1.0
    head = eyes = None
    if {"HeadPitch", "HeadYaw", "HeadRoll"} <= set(rotation):
        head = [[p, flip * y, r] for p, y, r in zip(rotation["HeadPitch"], rotation["HeadYaw"], rotation["HeadRoll"])]
    for yaw, pitch in (("LeftEyeYaw", "LeftEyePitch"), PAGE_EYES):
        if eyes is None and {yaw, pitch} <= set(rotation):
            eyes = [[flip * y, flip * p] for y, p in zip(rotation[yaw], rotation[pitch])]
    return {"fps": _timecode_fps([row[0] for row in body]), "names": [_camel(header[i]) for i in curves],
            "frames": frames, "head": head, "eyes": eyes}


def _camel(name: str) -> str:
    """Live Link Face's PascalCase (JawOpen) -> ARKit's camelCase (jawOpen)."""
    return name[:1].lower() + name[1:]


def _timecode_fps(codes: list[str]) -> float:
    """HH:MM:SS:FF(.mmm) timecodes -> the frame rate their FF counts at (FPS when under a second)."""
    seconds, frames = set(), []
    for code in codes:
        parts = code.split(":")
        if len(parts) == 4:
            seconds.add(parts[2])
            frames.append(int(float(parts[3])))
    return float(max(frames) + 1) if len(seconds) > 1 and frames else FPS


# ---- rotations: blendtalk's convention, in Blender's axes -----------------------------------------
def _matmul(a, b):
    return [[sum(a[i][k] * b[k][j] for k in range(3)) for j in range(3)] for i in range(3)]


def head_matrix(pitch: float, yaw: float, roll: float) -> list[list[float]]:
    """Head angles (radians) -> 3x3 rotation in blendtalk's axes: R_yaw R_pitch R_roll
    (`blendtalk.expression.head_motion.rotation_matrix`)."""
    cp, sp, cy, sy, cr, sr = math.cos(pitch), math.sin(pitch), math.cos(yaw), math.sin(yaw), math.cos(roll), math.sin(roll)
    r_pitch = [[1, 0, 0], [0, cp, -sp], [0, sp, cp]]
    r_yaw = [[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]]
    r_roll = [[cr, sr, 0], [-sr, cr, 0], [0, 0, 1]]
    return _matmul(_matmul(r_yaw, r_pitch), r_roll)


def eye_matrix(yaw: float, pitch: float) -> list[list[float]]:
    """Eye angles (radians, + yaw toward the face's left, + pitch up) -> 3x3 rotation in blendtalk's
    axes: yaw about +y after pitch about -x (`blendtalk.face.dressing.gaze_rotation`)."""
    cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
    return _matmul([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], [[1, 0, 0], [0, cp, sp], [0, -sp, cp]])


_TO_BLENDER = [[1, 0, 0], [0, 0, -1], [0, 1, 0]]  # blendtalk/glTF (x, y, z) -> Blender (x, -z, y)


def to_blender(m: list[list[float]]) -> list[list[float]]:
    """A rotation in blendtalk's axes -> the same rotation in Blender's (C m C^T)."""
    c_t = [list(r) for r in zip(*_TO_BLENDER)]
    return _matmul(_matmul(_TO_BLENDER, m), c_t)


def quaternion(m: list[list[float]]) -> tuple[float, float, float, float]:
    """3x3 rotation -> unit quaternion (w, x, y, z) with w >= 0."""
    trace = m[0][0] + m[1][1] + m[2][2]
    if trace > 0:
        s = 2 * math.sqrt(1 + trace)
        q = (s / 4, (m[2][1] - m[1][2]) / s, (m[0][2] - m[2][0]) / s, (m[1][0] - m[0][1]) / s)
    elif m[0][0] > m[1][1] and m[0][0] > m[2][2]:
        s = 2 * math.sqrt(1 + m[0][0] - m[1][1] - m[2][2])
        q = ((m[2][1] - m[1][2]) / s, s / 4, (m[0][1] + m[1][0]) / s, (m[0][2] + m[2][0]) / s)
    elif m[1][1] > m[2][2]:
        s = 2 * math.sqrt(1 + m[1][1] - m[0][0] - m[2][2])
        q = ((m[0][2] - m[2][0]) / s, (m[0][1] + m[1][0]) / s, s / 4, (m[1][2] + m[2][1]) / s)
    else:
        s = 2 * math.sqrt(1 + m[2][2] - m[0][0] - m[1][1])
        q = ((m[1][0] - m[0][1]) / s, (m[0][2] + m[2][0]) / s, (m[1][2] + m[2][1]) / s, s / 4)
    norm = math.sqrt(sum(c * c for c in q))
    return tuple((c if q[0] >= 0 else -c) / norm for c in q)


def head_quaternion(head) -> tuple[float, float, float, float]:
    """[pitch, yaw, roll] -> Blender quaternion (w, x, y, z) of the head."""
    return quaternion(to_blender(head_matrix(*head)))


def eye_quaternion(eyes) -> tuple[float, float, float, float]:
    """[yaw, pitch] -> Blender quaternion (w, x, y, z) of an eye in the head."""
    return quaternion(to_blender(eye_matrix(*eyes)))


# ---- the live stream: a small WebSocket client (RFC 6455, text messages in, no extensions) ---------
class StreamError(Exception):
    """The stream could not be opened or was closed by the server; the text says why."""


class StreamClient:
    """Reads blendtalk's live frames from ws://HOST:PORT/?token=TOKEN on a thread of its own.

    `latest()` hands over the newest frame message once (None when nothing new); with `record`
    every frame is also kept for `take_recorded()`. `hello` is the stream's first message,
    `notices` its notices, `error` why it stopped (None while it runs or after a clean end),
    `ended` whether the stream said it ended. `close()` stops it."""

    def __init__(self, url: str, timeout: float = 5.0, record: bool = False):
        parts = urlsplit(url.strip())
        if parts.scheme != "ws" or not parts.hostname:
            raise StreamError(f"the stream's URL must look like ws://HOST:PORT/?token=TOKEN, got {url!r}")
        try:
            self.port = parts.port or 80
        except ValueError:
            raise StreamError(f"the port in {url!r} is not a number") from None
        self.host, self.timeout, self.record = parts.hostname, timeout, record
        self.resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.hello: dict | None = None
        self.notices: list[str] = []
        self.error: str | None = None
        self.ended = False
        self.frames = 0
        self._latest: dict | None = None
        self._recorded: list[dict] = []
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closing = False

    # -- lifetime --
    def start(self) -> "StreamClient":
        """Connect and shake hands (StreamError saying why not), then read on a daemon thread."""
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as err:
            raise StreamError(f"cannot reach {self.host}:{self.port} ({err.strerror or err}); is "
                              "`python -m blendtalk live --emit ws://...` running?") from None
        try:
            self._handshake(sock)
        except (OSError, StreamError) as err:
            sock.close()
            raise StreamError(str(err) if isinstance(err, StreamError) else f"the handshake failed: {err}") from None
        sock.settimeout(None)  # the reader blocks; close() unblocks it
        self._sock = sock
        self._thread = threading.Thread(target=self._read_loop, name="blendtalk-stream", daemon=True)
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        self._closing = True
        if self._sock is not None:
            try:
                self._send(0x8, struct.pack("!H", 1000))
            except OSError:
                pass
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        if self._thread is not None:
            self._thread.join(2)

    # -- frames --
    def latest(self) -> dict | None:
        with self._lock:
            frame, self._latest = self._latest, None
        return frame

    def take_recorded(self) -> list[dict]:
        with self._lock:
            frames, self._recorded = self._recorded, []
        return frames

    # -- protocol --
    def _handshake(self, sock: socket.socket) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET {self.resource} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = sock.recv(4096)
            if not chunk or len(response) > 65536:
                raise StreamError(f"{self.host}:{self.port} did not answer as a WebSocket server")
            response += chunk
        head, _, rest = response.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        if len(lines[0].split()) < 2 or lines[0].split()[1] != "101":
            raise StreamError(f"{self.host}:{self.port} refused the WebSocket: {lines[0]}")
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        accept = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()
        if fields.get("sec-websocket-accept") != accept:
            raise StreamError(f"{self.host}:{self.port} answered with a wrong Sec-WebSocket-Accept")
        self._buffer = rest

    def _recv_exact(self, n: int) -> bytes:
        while len(self._buffer) < n:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def _send(self, opcode: int, payload: bytes = b"") -> None:
        mask = os.urandom(4)  # a client masks every frame it sends
        size = len(payload)
        header = bytes([0x80 | opcode]) + (bytes([0x80 | size]) if size < 126 else bytes([0x80 | 126]) + struct.pack("!H", size))
        self._sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _read_message(self) -> tuple[int, bytes]:
        """The next whole message (opcode, payload); control frames in between are answered here."""
        parts, first_opcode = [], None
        while True:
            b0, b1 = self._recv_exact(2)
            fin, opcode, size = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
            if size == 126:
                size = struct.unpack("!H", self._recv_exact(2))[0]
            elif size == 127:
                size = struct.unpack("!Q", self._recv_exact(8))[0]
            if size > _MAX_MESSAGE:
                raise StreamError(f"a message of {size} bytes is not a blendtalk frame")
            mask = self._recv_exact(4) if b1 & 0x80 else None
            payload = self._recv_exact(size)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x9:  # ping
                self._send(0xA, payload)
                continue
            if opcode in (0x8, 0xA):  # close, pong
                if opcode == 0x8:
                    return opcode, payload
                continue
            first_opcode = opcode if first_opcode is None else first_opcode
            parts.append(payload)
            if fin:
                return first_opcode, b"".join(parts)

    def _read_loop(self) -> None:
        try:
            while True:
                opcode, payload = self._read_message()
                if opcode == 0x8:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                    reason = payload[2:].decode("utf-8", "replace")
                    if code not in (1000, 1001) and not self._closing:
                        self.error = f"the server closed the stream ({code}): {reason or 'no reason given'}"
                    return
                if opcode == 0x1:
                    self._handle(json.loads(payload.decode("utf-8")))
                    if self.ended:  # the stream said it is over: stop reading, as if the server had closed
                        return
        except (OSError, ConnectionError, StreamError, ValueError) as err:
            if not self._closing and not self.ended:
                self.error = str(err) or type(err).__name__

    def _handle(self, message: dict) -> None:
        kind = message.get("type")
        if kind == "hello":
            if message.get("format") != FORMAT or message.get("version") != VERSION:
                raise StreamError(f"the stream is {message.get('format')} version {message.get('version')}; "
                                  f"this add-on reads {FORMAT} version {VERSION}")
            self.hello = message
        elif kind == "frame":
            with self._lock:
                self._latest = message
                self.frames += 1
                if self.record:
                    self._recorded.append(message)
        elif kind == "notice":
            self.notices.append(str(message.get("text", "")))
        elif kind == "end":
            self.ended = True
        elif kind == "error":
            raise StreamError(str(message.get("text", "the server refused the stream")))


# ---- Blender -------------------------------------------------------------------------------------
def shape_keys(objects) -> dict:
    """ARKit name in lower case -> the shape keys (key blocks) of `objects` that carry it."""
    found: dict = {}
    for obj in objects:
        keys = getattr(getattr(obj, "data", None), "shape_keys", None)
        if obj.type != "MESH" or keys is None:
            continue
        for block in keys.key_blocks[1:]:  # the first is the basis
            found.setdefault(block.name.lower(), []).append(block)
    return found


def is_head_bone(name: str) -> bool:
    """Head bones by name: Head, head, mixamorig:Head, DEF-head, CC_Base_Head."""
    last = name.lower().replace(":", "_").replace(".", "_").replace("-", "_").split("_")[-1]
    return last == "head"


def eye_side(name: str) -> str | None:
    """"left" or "right" for an eye bone or object by its name (LeftEye, eye.L, CC_Base_R_Eye,
    left_eye), else None; lids, brows, lashes and targets are not eyes."""
    low = name.lower()
    if "eye" not in low or any(part in low for part in ("lid", "brow", "lash", "target", "socket", "look")):
        return None
    words = low.replace(":", "_").replace(".", "_").replace("-", "_").replace("eye", "_").split("_")
    if "left" in low or "l" in words:
        return "left"
    if "right" in low or "r" in words:
        return "right"
    return None


class Turn:
    """An object or a pose bone that blendtalk turns. Rotations come in Blender's axes (for a bone: its
    armature's) and go on top of its rest (`_rest`); a bone's own axes are its rest orientation in the
    armature (`basis`), whatever way the rig's bones point."""

    def __init__(self, target, basis=None):
        self.target, self.basis = target, basis
        self.rest = _rest(target)
        self.name = target.name

    def turn(self, q) -> None:
        import mathutils

        q = mathutils.Quaternion(q)
        if self.basis is not None:
            q = self.basis.inverted() @ q @ self.basis
        self.target.rotation_quaternion = self.rest @ q

    def keyframe(self, frame: float) -> None:
        self.target.keyframe_insert("rotation_quaternion", frame=frame)


def _armature(objects):
    """The armature among the selected objects, or the one a selected mesh is deformed by or parented to."""
    for obj in objects:
        if obj.type == "ARMATURE":
            return obj
    for obj in objects:
        for mod in getattr(obj, "modifiers", ()):
            if mod.type == "ARMATURE" and mod.object is not None:
                return mod.object
        if obj.parent is not None and obj.parent.type == "ARMATURE":
            return obj.parent
    return None


def find_rig(objects) -> tuple:
    """(head Turn or None, [eye Turns]) for the selected objects. With an armature (selected, or
    deforming or parenting a selected mesh): its bones named like a head and like eyes. Otherwise,
    or for what the armature lacks: the selected objects' common parent as the head, and the objects
    named like eyes among them and its children (blendtalk_face.glb: head, left_eye, right_eye)."""
    head, eyes = None, {}
    arm = _armature(objects)
    if arm is not None:
        for pose_bone in arm.pose.bones:
            basis = pose_bone.bone.matrix_local.to_quaternion()
            if head is None and is_head_bone(pose_bone.name):
                head = Turn(pose_bone, basis)
            side = eye_side(pose_bone.name)
            if side and side not in eyes:
                eyes[side] = Turn(pose_bone, basis)
    meshes = [obj for obj in objects if obj.type != "ARMATURE"]
    parents = {obj.parent for obj in meshes if obj.parent is not None and obj.parent.type != "ARMATURE"}
    parent = next(iter(parents)) if len(parents) == 1 else None
    if head is None and parent is not None:
        head = Turn(parent)
    for obj in meshes + (list(parent.children) if parent is not None else []):
        side = eye_side(obj.name)
        if side and side not in eyes:
            eyes[side] = Turn(obj)
    return head, [eyes[side] for side in ("left", "right") if side in eyes]


REST_PROPERTY = "blendtalk_rest"  # custom property: an object's or bone's rotation before blendtalk first drove it


def _rest(target):
    """The rotation blendtalk's rotations go on top of: the object's (or pose bone's) own when
    blendtalk first drives it, kept in its REST_PROPERTY so that a second take is not added to the
    first one's last pose (delete the property to take the current rotation as the rest)."""
    import mathutils

    if REST_PROPERTY in target:
        return mathutils.Quaternion(target[REST_PROPERTY])
    if target.rotation_mode == "QUATERNION":
        rest = target.rotation_quaternion.copy()
    elif target.rotation_mode == "AXIS_ANGLE":
        rest = mathutils.Quaternion(target.rotation_axis_angle[1:], target.rotation_axis_angle[0])
    else:
        rest = target.rotation_euler.to_quaternion()
    target.rotation_mode = "QUATERNION"
    target[REST_PROPERTY] = list(rest)
    return rest


class Driver:
    """Poses shape keys, a head and eyes from frames: weights by ARKit name, rotations (`Turn`) on top
    of each object's or bone's rest."""

    def __init__(self, objects):
        self.keys = shape_keys(objects)
        if not self.keys:
            raise ValueError("no selected mesh has shape keys with ARKit names (jawOpen, eyeBlinkLeft, ...): "
                             "select the face (and its eyes), e.g. blendtalk_face.glb's")
        self.head, self.eyes = find_rig(objects)

    def describe(self) -> str:
        """Which head and eyes turn, for the report line."""
        head = self.head.name if self.head is not None else "none (select its parent or armature)"
        return f"head: {head}; eyes: {', '.join(e.name for e in self.eyes) or 'none'}"

    def pose(self, weights: dict, head=None, eyes=None) -> None:
        for name, value in weights.items():
            for block in self.keys.get(name.lower(), ()):
                block.value = min(max(float(value), 0.0), 1.0)
        if head is not None and self.head is not None:
            self.head.turn(head_quaternion(head))
        if eyes is not None and self.eyes:
            q = eye_quaternion(eyes)  # both eyes turn alike (no vergence: the listener is far away)
            for eye in self.eyes:
                eye.turn(q)

    def keyframe(self, frame: float) -> None:
        for blocks in self.keys.values():
            for block in blocks:
                block.keyframe_insert("value", frame=frame)
        for turn in [self.head, *self.eyes]:
            if turn is not None:
                turn.keyframe(frame)


def speech_beside(path: str) -> str | None:
    """The take's speech, where it lies beside it: NAME.wav or NAME.mp4 for NAME_arkit.csv/json (the
    app's downloads are named so: blendtalk_sad.mp4 and blendtalk_sad_arkit.csv), else None."""
    folder, name = os.path.split(path)
    stem = os.path.splitext(name)[0]
    stem = stem[: -len("_arkit")] if stem.endswith("_arkit") else stem
    for suffix in (".wav", ".mp4"):
        candidate = os.path.join(folder, stem + suffix)
        if os.path.isfile(candidate):
            return candidate
    return None


def import_take(context, path: str) -> dict:
    """Keyframe a take (`read_take`) onto the selected objects from the current frame; sets the
    scene's frame rate to the take's and extends its end; the take's speech (`speech_beside`) becomes a
    sound strip from the same frame. Returns {"frames", "curves", "missing", "rig", "speech"}."""
    take = read_take(path)
    driver = Driver(list(context.selected_objects))
    scene = context.scene
    scene.render.fps, scene.render.fps_base = round(take["fps"]), round(take["fps"]) / take["fps"]
    start = scene.frame_current
    names = take["names"]
    for t, row in enumerate(take["frames"]):
        driver.pose(dict(zip(names, row)), take["head"][t] if take["head"] else None,
                    take["eyes"][t] if take["eyes"] else None)
        driver.keyframe(start + t)
    scene.frame_end = max(scene.frame_end, start + len(take["frames"]) - 1)
    sound = speech_beside(path)
    if sound is not None:  # heard while scrubbing and playing, in step with the keys
        editor = scene.sequence_editor_create()
        strips = editor.strips if hasattr(editor, "strips") else editor.sequences  # renamed in Blender 4.4
        strips.new_sound(f"blendtalk {os.path.basename(sound)}", sound, 1, start)
    missing = sorted(n for n in names if n.lower() not in driver.keys)
    return {"frames": len(take["frames"]), "curves": len(names) - len(missing), "missing": missing,
            "rig": driver.describe(), "speech": None if sound is None else os.path.basename(sound)}


class LiveLink:
    """A StreamClient and a Driver joined: `poll()` applies the newest frame (and keyframes the
    recorded ones from `start`); Blender calls it from a timer."""

    def __init__(self, context, url: str, record: bool = False):
        self.driver = Driver(list(context.selected_objects))
        self.record, self.start = record, context.scene.frame_current
        self.client = StreamClient(url, record=record).start()

    def poll(self) -> bool:
        """Apply what arrived; False once the stream has stopped."""
        for message in self.client.take_recorded():
            self.driver.pose(message.get("arkit", {}), message.get("head"), message.get("eyes"))
            self.driver.keyframe(self.start + int(message.get("frame", 0)))
        message = self.client.latest()
        if message is not None:
            self.driver.pose(message.get("arkit", {}), message.get("head"), message.get("eyes"))
        return self.client.running

    def status(self) -> str:
        c = self.client
        if c.error:
            return c.error
        if c.ended:
            return f"the stream ended after {c.frames} frames"
        return f"{c.frames} frames" + (f"; {c.notices[-1]}" if c.notices else "")

    def close(self) -> None:
        self.client.close()


_LIVE: dict = {}  # the add-on's one live link while Blender runs (a timer callback cannot hold state)


def _poll_live():
    import bpy

    link = _LIVE.get("link")
    if link is None:
        return None
    try:
        running = link.poll()
    except Exception as err:  # a bad frame or a deleted object: stop, and say why in the panel
        link.client.error = f"stopped: {err}"
        running = False
    for area in getattr(bpy.context.screen, "areas", ()):  # the panel's status line; no screen in background mode
        if area.type == "VIEW_3D":
            area.tag_redraw()
    if not running:
        link.close()
        _LIVE["status"] = link.status()
        _LIVE.pop("link", None)
        return None
    _LIVE["status"] = link.status()
    return 1 / 60


def _classes():
    import bpy
    from bpy_extras.io_utils import ImportHelper

    class BLENDTALK_OT_import_take(bpy.types.Operator, ImportHelper):
        """Keyframe a blendtalk take (ARKit JSON or Live Link Face CSV) on the selected face from the current frame"""

        bl_idname = "blendtalk.import_take"
        bl_label = "Import take"
        bl_options = {"REGISTER", "UNDO"}
        filter_glob: bpy.props.StringProperty(default="*.json;*.csv", options={"HIDDEN"})

        def execute(self, context):
            try:
                done = import_take(context, self.filepath)
            except (OSError, ValueError) as err:
                self.report({"ERROR"}, str(err))
                return {"CANCELLED"}
            missing = f"; not on this face: {', '.join(done['missing'][:6])}" if done["missing"] else ""
            speech = f"; speech: {done['speech']}" if done["speech"] else ""
            self.report({"INFO"}, f"{done['frames']} frames of {done['curves']} curves keyframed; {done['rig']}{speech}{missing}")
            return {"FINISHED"}

    class BLENDTALK_OT_live_connect(bpy.types.Operator):
        """Drive the selected face from a running `python -m blendtalk live --emit ws://...`"""

        bl_idname = "blendtalk.live_connect"
        bl_label = "Connect"

        def execute(self, context):
            if _LIVE.get("link") is not None:
                self.report({"WARNING"}, "already connected: Disconnect first")
                return {"CANCELLED"}
            props = context.scene.blendtalk
            try:
                _LIVE["link"] = LiveLink(context, props.url, props.record)
            except (StreamError, ValueError) as err:
                self.report({"ERROR"}, str(err))
                return {"CANCELLED"}
            _LIVE["status"] = "connected; " + _LIVE["link"].driver.describe()
            bpy.app.timers.register(_poll_live, first_interval=0.0)
            return {"FINISHED"}

    class BLENDTALK_OT_live_disconnect(bpy.types.Operator):
        """Stop driving the face"""

        bl_idname = "blendtalk.live_disconnect"
        bl_label = "Disconnect"

        def execute(self, context):
            link = _LIVE.pop("link", None)
            if link is not None:
                link.close()
                _LIVE["status"] = f"disconnected after {link.client.frames} frames"
            return {"FINISHED"}

    class BlendtalkSettings(bpy.types.PropertyGroup):
        url: bpy.props.StringProperty(name="Stream", default="ws://127.0.0.1:8765/?token=",
                                      description="The URL `python -m blendtalk live --emit ws://...` prints, with its token")
        record: bpy.props.BoolProperty(name="Record", default=False,
                                       description="Also keyframe every frame of the stream, from the current frame")

    class BLENDTALK_PT_panel(bpy.types.Panel):
        bl_label = "blendtalk"
        bl_space_type, bl_region_type, bl_category = "VIEW_3D", "UI", "blendtalk"

        def draw(self, context):
            layout, props = self.layout, context.scene.blendtalk
            layout.label(text="Select the face (and its eyes).")
            layout.operator(BLENDTALK_OT_import_take.bl_idname, icon="IMPORT")
            box = layout.box()
            box.label(text="Live")
            box.prop(props, "url", text="")
            box.prop(props, "record")
            if _LIVE.get("link") is None:
                box.operator(BLENDTALK_OT_live_connect.bl_idname, icon="PLAY")
            else:
                box.operator(BLENDTALK_OT_live_disconnect.bl_idname, icon="PAUSE")
            if _LIVE.get("status"):
                box.label(text=_LIVE["status"])

    return [BlendtalkSettings, BLENDTALK_OT_import_take, BLENDTALK_OT_live_connect, BLENDTALK_OT_live_disconnect,
            BLENDTALK_PT_panel]


def register() -> None:
    import bpy

    _LIVE["classes"] = _classes()
    for cls in _LIVE["classes"]:
        bpy.utils.register_class(cls)
    bpy.types.Scene.blendtalk = bpy.props.PointerProperty(type=_LIVE["classes"][0])


def unregister() -> None:
    import bpy

    link = _LIVE.pop("link", None)
    if link is not None:
        link.close()
    if bpy.app.timers.is_registered(_poll_live):
        bpy.app.timers.unregister(_poll_live)
    del bpy.types.Scene.blendtalk
    for cls in reversed(_LIVE.pop("classes", [])):
        bpy.utils.unregister_class(cls)
