"""Live sessions over a WebSocket, beside the app's /animate queue.

Routes (added to the app's server by `add_routes`):

    GET  /live/                  the live page (three.js face, microphone, controls), with a fresh token
    GET  /live/token             {"token": ...} for an external client (a script, an engine)
    GET  /live/face_arkit.glb    the dressed rig with the 52 ARKit units as morph targets (sent once)
    GET  /live/face_look.json    the file renderer's camera, lights, material and per-unit wrinkles and creases (`live.look`)
    GET  /live/take/ID.mp4?size=256   a finished session's take rendered as an mp4 (audio + the ARKit face)
    GET  /live/take/ID.csv       the same take's ARKit curves, head and eyes in Live Link Face's CSV layout
    GET  /live/static/...        the page's script and the bundled three.js (MIT, vendor/three/LICENSE)
    WS   /live/ws?token=TOKEN    the stream

Protocol: the client sends {"type": "start", "emotion": "happy", "intensity": 1.0, "sample_rate": 16000}
(optional: "mix_with", "mix_ratio", "channels": 1, "format": "int16"), then binary messages of
16 kHz mono int16 little-endian samples (any length; 20 ms is usual), and at any time
{"type": "expression", ...} with any of the start's expression fields (those left out keep their
values) or {"type": "stop"}. The server answers with the "blendtalk-live" v1 messages of
`live_stream` (hello, frame, notice, end) and {"type": "error", "text": ...}: before it closes a
connection it refuses, or for one bad message of a session that goes on. A session that ends (stop,
cap, or IDLE_SECONDS without a message) also gets {"type": "take", "id": ..., "seconds": ...}
before "end": its take is kept TAKE_KEEP_SECONDS for /live/take/ID.mp4 and .csv (the newest
MAX_TAKES; rendered one at a time).

Limits: at most `max_sessions` at once (the CPU's cores: a session takes about 60% of one core),
each at most `max_seconds` of audio; tokens are single use and expire after TOKEN_SECONDS; a
browser must come from the page's own origin (or one of `origins`). One session's failure or
disconnect closes only that session.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from ..constants import ASSETS_DIR, SAMPLE_RATE
from .stream import VERSION, encode, end_message, frame_message, hello_message, notice_message

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent / "web"
GLB_PATH = ASSETS_DIR / "live" / "face_arkit.glb"
LOOK_PATH = ASSETS_DIR / "live" / "face_look.json"  # the file renderer's look for the page (`live.look`)
MAX_SESSIONS = 2  # concurrent live sessions: one per core of the 2-core CPU the app is sized for
MAX_SECONDS = 300.0  # s of audio per session
TOKEN_SECONDS = 600.0  # s a minted token stays valid (single use)
MAX_TOKENS = 1000  # minted, unused tokens kept; the oldest are forgotten first
MAX_MESSAGE_BYTES = 64_000  # one audio message: 2 s of int16 at 16 kHz
MAX_TAKES = 4  # finished takes kept for an mp4 (about 12 MB each at the 300 s cap); the oldest go first
TAKE_KEEP_SECONDS = 600.0  # s a finished take stays available (the app keeps its results 10 min too)
IDLE_SECONDS = 30.0  # s without any message: the session ends, so an idle client holds no slot
MAX_CONTROL_BYTES = 4096  # one JSON control message
INBOX_MESSAGES = 200  # messages read ahead of the session (with their arrival times); then the socket waits
EXPRESSION_KEYS = ("emotion", "intensity", "mix_with", "mix_ratio")
START_EXPRESSION = {"emotion": "neutral", "intensity": 1.0, "mix_with": None, "mix_ratio": 0.5}


def parse_control(text: str | None) -> dict:
    """A control message's text -> its JSON object; ValueError saying what to send."""
    if text is None or len(text.encode()) > MAX_CONTROL_BYTES:
        raise ValueError(f"control messages are JSON objects of at most {MAX_CONTROL_BYTES} bytes")
    try:
        control = json.loads(text)
    except ValueError:
        control = None
    if not isinstance(control, dict):
        raise ValueError('control messages are JSON objects, e.g. {"type": "stop"}')
    return control


def parse_start(text: str | None) -> dict:
    """The start message's text -> the session's expression (EXPRESSION_KEYS); ValueError (or
    LiveInputError for the audio's format) saying what to send."""
    from .session import LiveInputError, check_sample_rate

    start = parse_control(text)
    if start.get("type") != "start":
        raise ValueError('send {"type": "start", "emotion": ..., "sample_rate": 16000} first')
    check_sample_rate(start.get("sample_rate", SAMPLE_RATE))
    if start.get("channels", 1) != 1:
        raise LiveInputError('live audio must be mono: mix the channels down and send "channels": 1')
    if start.get("format", "int16") != "int16":
        raise LiveInputError('live audio travels as 16-bit integers ("format": "int16", little-endian): '
                             "convert float samples before sending")
    return {k: start.get(k, v) for k, v in START_EXPRESSION.items()}


class LiveService:
    """Live sessions on a loaded Pipeline; see the module docstring."""

    def __init__(self, pipe, max_sessions: int = MAX_SESSIONS, max_seconds: float = MAX_SECONDS,
                 origins: tuple[str, ...] = (), lookahead: int = 4, head_motion: bool = True):
        from .session import default_prior, warm_up

        self.pipe, self.max_sessions, self.max_seconds = pipe, max_sessions, max_seconds
        self.origins, self.lookahead = tuple(origins), lookahead
        self.head_motion = head_motion  # False: the head and eyes rest (eval/live_legibility.py compares faces alone)
        self.prior = default_prior()  # once, not per session
        warm_up(pipe, self.prior)
        self.tokens: dict[str, float] = {}
        self.active = 0
        self._lock = threading.Lock()
        self.takes: dict[str, tuple] = {}  # id -> (Take, expiry), oldest first
        self._render = threading.Lock()  # one take rendered at a time: it shares the CPU with live sessions

    def keep_take(self, take) -> str:
        """Store a finished take for /live/take/ID.mp4; returns its id (unguessable: it is the key)."""
        key = secrets.token_urlsafe(12)
        with self._lock:
            now = time.monotonic()
            self.takes = {k: v for k, v in self.takes.items() if v[1] > now}
            while len(self.takes) >= MAX_TAKES:
                self.takes.pop(next(iter(self.takes)))
            self.takes[key] = (take, now + TAKE_KEEP_SECONDS)
        return key

    def take_file(self, key: str, suffix: str, folder: Path, size: int = 256) -> Path:
        """Take `key` written into `folder`: "mp4" rendered at `size` px, or "csv", its ARKit curves in
        Live Link Face's layout (as `blendtalk live --save-csv` writes them). LookupError for a take no
        longer kept, ValueError for a bad size; both are said to the user."""
        from .take import check_size

        if suffix == "mp4":
            check_size(size)
        with self._lock:
            entry = self.takes.get(key)
        if entry is None or entry[1] <= time.monotonic():
            raise LookupError(f"this take is no longer kept (takes are kept {TAKE_KEEP_SECONDS / 60:g} min, the newest "
                              f"{MAX_TAKES}); record a new one")
        if suffix == "csv":
            from ..render.exports import write_arkit_csv

            return write_arkit_csv(entry[0].animation(self.pipe.rig), folder / "blendtalk-live-take.csv")
        with self._render:
            return entry[0].write_mp4(self.pipe, folder / "blendtalk-live-take.mp4", size)

    def mint(self) -> str:
        token = secrets.token_urlsafe(18)
        with self._lock:
            now = time.monotonic()
            self.tokens = {t: e for t, e in self.tokens.items() if e > now}
            while len(self.tokens) >= MAX_TOKENS:
                self.tokens.pop(next(iter(self.tokens)))
            self.tokens[token] = now + TOKEN_SECONDS
        return token

    def _take(self, token: str | None) -> bool:
        with self._lock:
            expiry = self.tokens.pop(token or "", None)
        return expiry is not None and expiry > time.monotonic()

    def _reserve(self) -> bool:
        with self._lock:
            if self.active >= self.max_sessions:
                return False
            self.active += 1
            return True

    def _release(self) -> None:
        with self._lock:
            self.active -= 1

    # ---- HTTP ----
    def routes(self) -> list:
        from starlette.responses import FileResponse, HTMLResponse, JSONResponse
        from starlette.routing import Mount, Route, WebSocketRoute
        from starlette.staticfiles import StaticFiles

        async def page(request):
            html = (WEB_DIR / "live.html").read_text().replace("__TOKEN__", self.mint())
            return HTMLResponse(html, headers={"Cache-Control": "no-store"})

        async def token(request):
            return JSONResponse({"token": self.mint(), "expires_in_s": TOKEN_SECONDS},
                                headers={"Cache-Control": "no-store"})

        async def glb(request):
            if not GLB_PATH.is_file():
                return JSONResponse({"error": "face_arkit.glb is missing: python tools/build_live_glb.py"}, status_code=404)
            return FileResponse(GLB_PATH, media_type="model/gltf-binary")

        async def look(request):
            if not LOOK_PATH.is_file():
                return JSONResponse({"error": "face_look.json is missing: python tools/build_live_glb.py"}, status_code=404)
            return FileResponse(LOOK_PATH, media_type="application/json")

        async def take(request):
            import shutil
            import tempfile

            from starlette.background import BackgroundTask

            size = request.query_params.get("size", "256")
            suffix = request.path_params["suffix"]
            if suffix not in ("mp4", "csv"):
                return JSONResponse({"error": "a take is served as ID.mp4 or ID.csv"}, status_code=404)
            folder = Path(tempfile.mkdtemp(prefix="blendtalk-take-"))
            try:
                path = await asyncio.to_thread(self.take_file, request.path_params["key"], suffix, folder,
                                               int(size) if size.isdigit() else size)
            except (ValueError, LookupError) as err:
                shutil.rmtree(folder, ignore_errors=True)
                return JSONResponse({"error": str(err)}, status_code=404 if isinstance(err, LookupError) else 400)
            except Exception:
                shutil.rmtree(folder, ignore_errors=True)
                logger.exception("rendering a live take failed")
                return JSONResponse({"error": "rendering the take failed on the server; save the CSV instead"}, status_code=500)
            return FileResponse(path, media_type="video/mp4" if suffix == "mp4" else "text/csv", filename=path.name,
                                background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))

        return [Route("/live/", page), Route("/live", page), Route("/live/token", token), Route("/live/face_arkit.glb", glb),
                Route("/live/face_look.json", look),
                Route("/live/take/{key}.{suffix:str}", take),
                WebSocketRoute("/live/ws", self.websocket), Mount("/live/static", StaticFiles(directory=WEB_DIR))]

    # ---- the stream ----
    async def websocket(self, ws) -> None:
        from starlette.websockets import WebSocketDisconnect

        from .session import LiveConfig, LiveSession

        origin, host = ws.headers.get("origin"), ws.headers.get("host", "")
        await ws.accept()

        async def refuse(text: str, code: int) -> None:
            await ws.send_text(json.dumps({"type": "error", "text": text}))
            await ws.close(code)

        if origin and urlparse(origin).netloc != host and origin not in self.origins:
            return await refuse(f"origin {origin} may not open live sessions on this server", 1008)
        if not self._take(ws.query_params.get("token")):
            return await refuse("missing, used or expired token: reload the page (or GET /live/token)", 1008)
        try:
            text = await asyncio.wait_for(ws.receive_text(), timeout=IDLE_SECONDS)
        except (asyncio.TimeoutError, KeyError, WebSocketDisconnect):
            return await refuse('send {"type": "start", "emotion": ..., "sample_rate": 16000} first', 1003)
        try:
            expression = parse_start(text)
        except ValueError as err:
            return await refuse(str(err), 1003)
        if not self._reserve():
            return await refuse(f"live mode is busy ({self.max_sessions} sessions at most on this server); "
                                "try again in a minute", 1013)
        try:
            try:
                session = LiveSession(self.pipe, self.prior, LiveConfig(lookahead=self.lookahead, head_motion=self.head_motion,
                                                                         realtime=True), **expression)
            except (ValueError, TypeError) as err:
                return await refuse(str(err), 1003)
            names = session.arkit_names
            await ws.send_text(encode(hello_message(names, session.lookahead_seconds)))
            count = await self._serve(ws, session, names, expression)
            if count is not None:
                await ws.send_text(encode(end_message(count)))
                await ws.close()
        except WebSocketDisconnect:
            pass  # the client left: its session ends here, nobody else notices
        except Exception:  # one session's failure must not reach the server or the others
            logger.exception("live session failed")
            try:
                await refuse("the live session failed on the server; start again", 1011)
            except Exception:
                pass
        finally:
            self._release()

    async def _serve(self, ws, session, names, expression: dict) -> int | None:
        from .session import LiveInputError
        from .take import Take

        count = 0
        lock = asyncio.Lock()
        take = Take(names, self.max_seconds) if names else None  # a take is the ARKit face: none without the mapping
        # A reader notes when each message arrives while the session works on earlier ones, so the
        # session can tell a busy CPU (audio waiting to be read) from a client that paused.
        inbox: asyncio.Queue = asyncio.Queue(maxsize=INBOX_MESSAGES)

        async def read() -> None:
            while True:
                try:
                    message = await asyncio.wait_for(ws.receive(), timeout=IDLE_SECONDS)
                except asyncio.TimeoutError:
                    message = {"type": "idle"}
                await inbox.put((message, time.perf_counter()))
                if message["type"] != "websocket.receive":
                    return

        async def error(text: str) -> None:
            await ws.send_text(json.dumps({"type": "error", "text": text}))

        async def send(frames, last: bool = False) -> None:
            nonlocal count
            if take is not None:
                take.add_frames(frames)
            for frame in frames:
                await ws.send_text(encode(frame_message(frame, names)))
                count += 1
            while session.notices:
                await ws.send_text(encode(notice_message(session.received / SAMPLE_RATE, session.notices.popleft())))
            if last and take is not None and take.arkit:
                await ws.send_text(json.dumps({"type": "take", "version": VERSION, "id": self.keep_take(take),
                                               "seconds": round(take.seconds, 2)}))

        reader = asyncio.create_task(read())
        try:
            while True:
                message, arrived = await inbox.get()
                if message["type"] == "websocket.disconnect":
                    return None
                if message["type"] == "idle":
                    await ws.send_text(encode(notice_message(session.received / SAMPLE_RATE,
                                                             f"nothing received for {IDLE_SECONDS:g} s: the session ended "
                                                             "(send silence to keep one open); start a new one")))
                    await send(await asyncio.to_thread(session.finish), last=True)
                    return count
                data, text = message.get("bytes"), message.get("text")
                if data is not None:
                    if len(data) % 2 or len(data) > MAX_MESSAGE_BYTES:
                        await error(f"audio messages must be whole int16 samples, at most {MAX_MESSAGE_BYTES} bytes")
                        continue
                    async with lock:
                        received = session.received
                        try:
                            frames = await asyncio.to_thread(session.push, np.frombuffer(data, "<i2"), SAMPLE_RATE, arrived)
                        except LiveInputError as err:
                            await error(str(err))
                            continue
                        if take is not None and session.received > received:  # audio the session dropped is not in the take either
                            take.add_audio(np.frombuffer(data, "<i2"))
                        await send(frames)
                    if session.received >= self.max_seconds * SAMPLE_RATE:
                        await ws.send_text(encode(notice_message(session.received / SAMPLE_RATE,
                                                                 f"the session reached its cap of {self.max_seconds:g} s; start a new one")))
                        await send(await asyncio.to_thread(session.finish), last=True)
                        return count
                    continue
                try:
                    control = parse_control(text)
                except ValueError as err:
                    await error(str(err))
                    continue
                kind = control.get("type")
                if kind == "expression":
                    wanted = expression | {k: control[k] for k in EXPRESSION_KEYS if k in control}  # the rest keep their values
                    try:
                        session.set_expression(**wanted)
                    except (ValueError, TypeError) as err:
                        await error(str(err))
                    else:
                        expression = wanted
                elif kind == "stop":
                    await send(await asyncio.to_thread(session.finish), last=True)
                    return count
                elif kind == "start":
                    await error('this session has started: send audio, {"type": "expression", ...} or {"type": "stop"}')
                else:
                    await error('unknown message; send audio bytes, {"type": "expression", ...} or {"type": "stop"}')
        finally:
            reader.cancel()


def add_routes(app, service: LiveService) -> None:
    """Put the live routes first in a Starlette/FastAPI app (before any catch-all of the host app)."""
    for route in reversed(service.routes()):
        app.router.routes.insert(0, route)
