"""The live frame format, and the sources and sinks of `python -m blendtalk live`.

Frame format "blendtalk-live" version 1: one JSON object per line (stdout) or per WebSocket text
message, each with "type" and "version":

    {"type": "hello", "format": "blendtalk-live", "version": 1, "fps": 30, "arkit_names": [52 names],
     "lookahead_ms": 167, "head": "pitch yaw roll", "eyes": "yaw pitch", "units": "radians"}
    {"type": "frame", "version": 1, "frame": 12, "t": 0.4, "arkit": {"eyeBlinkLeft": 0.0, ...},
     "head": [pitch, yaw, roll], "eyes": [yaw, pitch], "latency_ms": 41.2}
    {"type": "notice", "version": 1, "t": 5.1, "text": "no sound for 5 s ..."}
    {"type": "end", "version": 1, "frames": 93}

t: seconds of audio from the stream's start (frame / fps). arkit: the 52 ARKit weights in [0, 1]
by name. head: radians, + pitch nods down, + yaw turns toward the face's left, + roll tilts toward
the face's left, applied as R = R_yaw R_pitch R_roll about the upper neck. eyes: radians in the
head, + yaw toward the face's left, + pitch up. latency_ms: from the arrival of the audio that
completed the frame's window to the frame leaving the model. A reader ignores keys it does not
know; a new version changes the meaning of an existing key.
"""

from __future__ import annotations

import json
import queue
import secrets
import threading
import time
from typing import Iterator

import numpy as np

from ..constants import FPS, SAMPLE_RATE

FORMAT = "blendtalk-live"
VERSION = 1
CHUNK_SECONDS = 0.02  # s: a file is fed in chunks of this length, at the pace they would be recorded


def hello_message(names, lookahead_seconds: float) -> dict:
    return {"type": "hello", "format": FORMAT, "version": VERSION, "fps": FPS, "arkit_names": list(names),
            "lookahead_ms": round(lookahead_seconds * 1000), "head": "pitch yaw roll", "eyes": "yaw pitch",
            "units": "radians"}


def frame_message(frame, names) -> dict:
    """A `LiveFrame` -> its "frame" message (weights rounded to 1e-4, angles to 1e-5 rad)."""
    arkit = {} if frame.arkit is None else {n: round(float(w), 4) for n, w in zip(names, frame.arkit)}
    return {"type": "frame", "version": VERSION, "frame": frame.index, "t": round(frame.t, 4), "arkit": arkit,
            "head": [round(float(a), 5) for a in frame.head_rotation], "eyes": [round(float(a), 5) for a in frame.gaze],
            "latency_ms": round(frame.latency * 1000, 1)}


def notice_message(t: float, text: str) -> dict:
    return {"type": "notice", "version": VERSION, "t": round(t, 3), "text": text}


def end_message(frames: int) -> dict:
    return {"type": "end", "version": VERSION, "frames": frames}


def encode(message: dict) -> str:
    return json.dumps(message, separators=(",", ":"))


# ---- sources ----
def realtime_chunks(audio: np.ndarray, chunk_seconds: float = CHUNK_SECONDS) -> Iterator[tuple[np.ndarray, float]]:
    """Audio (S,) in chunks of `chunk_seconds`, each yielded when it would have finished recording
    (the pace of a microphone; the wall clock is checked per chunk, so a slow consumer does not
    drift), with that moment (`time.perf_counter()`): a consumer running late sees how late."""
    step = max(1, int(round(chunk_seconds * SAMPLE_RATE)))
    start = time.perf_counter()
    for i in range(0, len(audio), step):
        due = start + min(i + step, len(audio)) / SAMPLE_RATE
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        yield audio[i:i + step], due


def microphone_chunks(chunk_seconds: float = CHUNK_SECONDS, stop: threading.Event | None = None) -> Iterator[tuple[np.ndarray, float]]:
    """16 kHz mono int16 chunks from the default input device (sounddevice), each with the moment it
    was recorded (`time.perf_counter()` when the driver handed it over). The device is opened
    here, before the first chunk is asked for: ValueError with what to do when the library, the
    PortAudio system library or a microphone is missing, before a caller has announced a stream."""
    try:
        import sounddevice as sd
    except ImportError as err:
        raise ValueError(f"--input mic needs the sounddevice library ({err}): pip install sounddevice, "
                         "or give an audio FILE") from None
    except OSError as err:  # sounddevice is there, PortAudio is not
        raise ValueError(f"--input mic needs the PortAudio system library ({err}): on Debian or Ubuntu, "
                         "apt-get install libportaudio2; or give an audio FILE") from None
    q: queue.Queue = queue.Queue(maxsize=500)

    def callback(data, frames, when, status):
        try:
            q.put_nowait((data[:, 0].copy(), time.perf_counter()))
        except queue.Full:  # the consumer stopped: drop rather than grow
            pass

    try:
        stream = sd.InputStream(samplerate=SAMPLE_RATE, channels=1, dtype="int16",
                                blocksize=int(chunk_seconds * SAMPLE_RATE), callback=callback)
    except Exception as err:  # PortAudioError has no public base; any failure here means no usable microphone
        raise ValueError(f"no usable microphone ({str(err).splitlines()[0]}); check the input device, "
                         "or give an audio FILE") from None

    def chunks():
        with stream:
            while stop is None or not stop.is_set():
                try:
                    yield q.get(timeout=1.0)
                except queue.Empty:
                    raise ValueError("the microphone stopped sending audio (unplugged or taken by another program)") from None

    return chunks()


# ---- sinks ----
class WebSocketBroadcast:
    """A WebSocket server at ws://host:port that sends every message to every connected client.

    Clients must give `?token=TOKEN` (a fresh random one unless given; else closed with 4401 and the
    reason); browsers must come from one of `origins` (else HTTP 403 with a one-line body; clients
    that send no Origin header, such as engines and scripts, are let in); at most `max_clients` at
    once (else closed with 4429). A client that joins late gets the hello and then the stream from
    where it is. A slow client misses frames rather than holding up the others (a bounded queue
    each), and one that leaves is forgotten without a word on the terminal.
    """

    def __init__(self, host: str, port: int, token: str | None = None, origins: list[str] | None = None,
                 max_clients: int = 8):
        self.host, self.port = host, port
        self.token = token or secrets.token_urlsafe(16)
        self.origins, self.max_clients = origins or [], max_clients
        self._clients: set = set()
        self._loop = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._error: Exception | None = None
        self.hello: str | None = None

    def start(self) -> "WebSocketBroadcast":
        self._thread.start()
        self._ready.wait(10)
        if self._error:
            raise ValueError(f"cannot serve ws://{self.host}:{self.port}: {self._error}")
        return self

    def _run(self) -> None:
        import asyncio

        from websockets.asyncio.server import serve
        from websockets.exceptions import ConnectionClosed

        def check_origin(connection, request):
            origin = request.headers.get("Origin")
            if origin is not None and origin not in self.origins:  # a page of another site
                return connection.respond(403, f"origin {origin} may not connect; start the stream with --allow-origin {origin}\n")
            return None

        async def handler(ws):
            from urllib.parse import parse_qs, urlparse

            query = parse_qs(urlparse(ws.request.path).query)
            if query.get("token", [""])[0] != self.token:
                await ws.close(4401, "missing or wrong token: connect to ws://HOST:PORT/?token=TOKEN")
                return
            if len(self._clients) >= self.max_clients:
                await ws.close(4429, f"at most {self.max_clients} clients")
                return
            q: asyncio.Queue = asyncio.Queue(maxsize=90)  # 3 s of frames
            self._clients.add(q)
            try:
                if self.hello:
                    await ws.send(self.hello)
                while True:
                    message = await q.get()
                    if message is None:
                        break
                    await ws.send(message)
            except ConnectionClosed:
                pass  # the client left; the stream goes on for the others
            finally:
                self._clients.discard(q)

        async def main():
            try:
                server = await serve(handler, self.host, self.port, process_request=check_origin)
            except OSError as err:
                self._error = err
                self._ready.set()
                return
            self._loop = asyncio.get_running_loop()
            self._ready.set()
            async with server:
                await server.serve_forever()

        asyncio.run(main())

    def send(self, message: str) -> None:
        if self._loop is None:
            return

        def put():
            for q in list(self._clients):
                if q.full():  # too slow: it misses frames, the others do not wait
                    continue
                q.put_nowait(message)

        self._loop.call_soon_threadsafe(put)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(lambda: [q.put_nowait(None) for q in list(self._clients) if not q.full()])
            time.sleep(0.2)
