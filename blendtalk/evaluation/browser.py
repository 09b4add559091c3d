"""A real browser for evaluation and tests: headless Chromium driven through chromedriver's W3C
WebDriver API over HTTP (httpx, a gradio dependency), so no selenium or playwright is needed.

    with chrome("--use-fake-ui-for-media-stream") as page:
        page.get(url); page.click(page.find("#start")); png = page.screenshot_png(page.find("#view"))

Needs /usr/bin/chromium and /usr/bin/chromedriver (Debian: apt-get install chromium chromium-driver);
`available()` says whether they are there.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import httpx

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--window-size=1280,2200",
                "--autoplay-policy=no-user-gesture-required",
                "--enable-unsafe-swiftshader"]  # software WebGL (Plotly's mesh, the live page's three.js) without a GPU
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference


def stop_process(proc: subprocess.Popen, timeout: float) -> None:
    """Ask a child process to end; kill it if it has not within `timeout` s, and reap it."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def available() -> bool:
    """Whether Chromium and chromedriver are installed where `chrome` looks for them."""
    return CHROMIUM.exists() and CHROMEDRIVER.exists()


def fake_microphone_flags(wav: str | Path, loop: bool = False) -> tuple[str, ...]:
    """Chromium flags that grant the microphone and make it play `wav` (once, or looping)."""
    return ("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}" + ("" if loop else "%noloop"))


class WebDriver:
    """The few W3C WebDriver commands the test needs, over HTTP."""

    def __init__(self, url: str, extra_flags: tuple[str, ...] = ()):
        self.http = httpx.Client(base_url=url, timeout=120)
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": str(CHROMIUM), "args": CHROME_FLAGS + list(extra_flags)}}}}
        self.session = self._call("POST", "/session", caps)["sessionId"]

    def _call(self, method: str, path: str, body: dict | None = None):
        r = self.http.request(method, path, json=body)
        value = r.json().get("value")
        if r.status_code != 200:
            raise RuntimeError(f"WebDriver {method} {path}: {value}")
        return value

    def cmd(self, method: str, path: str, body: dict | None = None):
        return self._call(method, f"/session/{self.session}{path}", body)

    def get(self, url: str) -> None:
        self.cmd("POST", "/url", {"url": url})

    def find(self, css: str) -> str:
        return self.cmd("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]

    def wait_for(self, css: str, timeout: float = 60) -> str:
        end = time.monotonic() + timeout
        while True:
            try:
                return self.find(css)
            except RuntimeError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.2)

    def type(self, element: str, text: str) -> None:
        self.cmd("POST", f"/element/{element}/value", {"text": text})

    def click(self, element: str) -> None:
        self.cmd("POST", f"/element/{element}/click", {})

    def js(self, script: str, *elements: str):
        """Run `script` with `elements` (ids from `find`) as arguments[0], ..."""
        return self.cmd("POST", "/execute/sync", {"script": script, "args": [{ELEMENT: e} for e in elements]})

    def js_async(self, script: str):
        return self.cmd("POST", "/execute/async", {"script": script, "args": []})

    def frame(self, element: str | None) -> None:
        self.cmd("POST", "/frame", {"id": None if element is None else {ELEMENT: element}})

    def screenshot(self, path: Path, element: str | None = None) -> Path:
        """A PNG of the page's viewport, or of one element."""
        path.write_bytes(base64.b64decode(self.cmd("GET", f"/element/{element}/screenshot" if element else "/screenshot")))
        return path

    def quit(self) -> None:
        try:
            self.cmd("DELETE", "")
        finally:
            self.http.close()


def free_port() -> int:
    """A local TCP port free at the time of asking."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def chrome(*extra_flags: str):
    """A chromedriver and one WebDriver session of headless Chromium with `extra_flags`."""
    port = free_port()
    proc = subprocess.Popen([str(CHROMEDRIVER), f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                if httpx.get(f"{url}/status", timeout=1).json()["value"]["ready"]:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        driver = WebDriver(url, extra_flags)
        try:
            yield driver
        finally:
            driver.quit()
    finally:
        proc.terminate()
        proc.wait(timeout=10)




def png_rgb(data: bytes):
    """PNG bytes -> (H, W, 3) uint8 RGB."""
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def open_live_page(page, url: str, load_timeout: float) -> None:
    """Open the live page at url in `page` (a `WebDriver`) and wait until it has loaded its face."""
    page.get(url)
    end = time.monotonic() + load_timeout
    while not page.js("return !!(window.liveStats && window.liveStats.loaded)"):
        if time.monotonic() > end:
            raise RuntimeError("the live page did not load its face")
        time.sleep(0.2)


def live_page_frames(url: str, wav: str | Path, emotions, seconds: float = 6.0, settle: float = 1.0,
                     load_timeout: float = 90.0, progress=None) -> dict:
    """Frames of the live page's face (url: the server's /live/ page) while Chromium's fake microphone
    loops `wav`: for each emotion in turn (chosen on the page, as a user would, in one session),
    `settle` s for the change to ease in, then the face's canvas as drawn (`window.liveCapture`,
    else element screenshots) for `seconds` s. Returns {emotion: [(H, W, 3) uint8]} and, under
    "_page", the page's own counters (weight frames received, errors)."""
    frames = {}
    with chrome(*fake_microphone_flags(wav, loop=True)) as page:
        open_live_page(page, url, load_timeout)
        page.click(page.find("#start"))
        canvas = page.find("#view")
        end = time.monotonic() + load_timeout
        while page.js("return window.liveStats.received") < 30:  # streaming for a second
            if time.monotonic() > end:
                raise RuntimeError(f"the live page received no frames: {page.js('return window.liveStats.errors')}")
            time.sleep(0.2)
        for emotion in emotions:
            # As a user picks it: the select's value, then its change event (the page sends the new expression).
            page.js(f"const s = document.getElementById('emotion'); s.value = {json.dumps(emotion)};"
                    "s.dispatchEvent(new Event('change')); return s.value;")
            time.sleep(settle)
            shots, stop = [], time.monotonic() + seconds
            while time.monotonic() < stop:
                # The canvas's own pixels (drawn and read in one task), much faster than an element screenshot.
                url = page.js("return window.liveCapture ? window.liveCapture() : null;")
                data = url.split(",", 1)[1] if url else page.cmd("GET", f"/element/{canvas}/screenshot")
                shots.append(png_rgb(base64.b64decode(data)))
            frames[emotion] = shots
            if progress:
                progress(emotion, len(shots))
        frames["_page"] = page.js("const s = window.liveStats; return {received: s.received, fps: s.fps, errors: s.errors};")
    return frames


def page_frames_of_weights(url: str, frames, load_timeout: float = 90.0) -> list:
    """The live page's face (url: the server's /live/ page) drawn from given frames, without a
    microphone: each a dict of the frame format's fields ("arkit": {unit: weight}, "head", "eyes"),
    shown with `window.liveShow` and read with `window.liveCapture`. -> [(H, W, 3) uint8]."""
    shots = []
    with chrome() as page:
        open_live_page(page, url, load_timeout)
        for frame in frames:
            data = page.js(f"window.liveShow({json.dumps(frame)}); return window.liveCapture();")
            shots.append(png_rgb(base64.b64decode(data.split(",", 1)[1])))
    return shots


# ---- Firefox ----
FIREFOX = Path("/usr/bin/firefox-esr")
FIREFOX_PREFS = {  # a quiet profile: no first-run pages, updates or telemetry; a fake microphone granted
    "marionette.port": 0,  # set per run
    "media.navigator.streams.fake": True,  # a generated tone as the microphone (Firefox plays no file)
    "media.navigator.permission.disabled": True,
    "webgl.force-enabled": True,  # no GPU here: Firefox blocks WebGL on software (Mesa llvmpipe) unless forced
    "gfx.x11-egl.force-enabled": True, "webgl.out-of-process": False, "gfx.webrender.software": True,
    "media.autoplay.default": 0, "media.autoplay.block-webaudio": False,  # the test plays a file into the page's audio graph
    "browser.shell.checkDefaultBrowser": False, "browser.startup.homepage_override.mstone": "ignore",
    "datareporting.policy.dataSubmissionEnabled": False, "toolkit.telemetry.reportingpolicy.firstRun": False,
    "app.update.disabledForTesting": True, "browser.safebrowsing.update.enabled": False,
    "network.captive-portal-service.enabled": False, "extensions.update.enabled": False,
}

# Headless Firefox has no display to ask GLX for a context, and no pref makes it try EGL's headless
# (surfaceless) platform: its WebGL fails with "Exhausted GL driver options" whatever webgl.*, gfx.* or
# layers.* prefs say (tried: webgl.force-enabled, webgl.disabled=false, webgl.enable-webgl2,
# layers.acceleration.force-enabled, gfx.webrender.all, gfx.blocklist.all=-1, LIBGL_ALWAYS_SOFTWARE=1,
# MOZ_HEADLESS=1, EGL_PLATFORM=surfaceless, MOZ_X11_EGL=1). This environment variable makes WebGL take
# EGL, which Mesa serves with llvmpipe: WebGL 1 and 2 then work headless.
FIREFOX_ENV = {"MOZ_WEBGL_FORCE_EGL": "1"}
PULSEAUDIO = Path("/usr/bin/pulseaudio")  # apt-get install pulseaudio


@contextlib.contextmanager
def null_audio_output():
    """A private PulseAudio server with a null sink, as env for a browser ({} without pulseaudio).
    Firefox keeps every AudioContext suspended where it finds no audio output (a server with no
    sound card): the live page's microphone worklet would then never run."""
    import shutil
    import tempfile

    if not PULSEAUDIO.exists():
        yield {}
        return
    folder = Path(tempfile.mkdtemp(prefix="blendtalk-pulse-"))
    socket_path = folder / "native"
    proc = subprocess.Popen([str(PULSEAUDIO), "-n", "--daemonize=no", "--exit-idle-time=-1", "--use-pid-file=no",
                             "--disable-shm=yes", "-L", "module-null-sink sink_name=blendtalk",
                             "-L", f"module-native-protocol-unix auth-anonymous=1 socket={socket_path}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HOME": str(folder), "XDG_RUNTIME_DIR": str(folder)})
    try:
        end = time.monotonic() + 10
        while not socket_path.exists() and proc.poll() is None and time.monotonic() < end:
            time.sleep(0.1)
        yield {"PULSE_SERVER": f"unix:{socket_path}"} if socket_path.exists() else {}
    finally:
        stop_process(proc, 10)
        shutil.rmtree(folder, ignore_errors=True)


def firefox_available() -> bool:
    """Firefox and PulseAudio (without an audio output Firefox never starts the page's audio)."""
    return FIREFOX.exists() and PULSEAUDIO.exists()


class Marionette:
    """The few WebDriver commands the live test needs, spoken directly to Firefox's Marionette
    server (what geckodriver translates WebDriver into; geckodriver itself is not installable
    here: Debian has no package and the npm package downloads the binary from GitHub).
    Messages are `length:json`; a command is [0, id, name, params], its answer [1, id, error, result]."""

    def __init__(self, port: int, timeout: float = 60.0):
        end = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
                break
            except OSError:
                if time.monotonic() > end:
                    raise RuntimeError(f"Firefox's Marionette server did not open port {port}") from None
                time.sleep(0.2)
        self.buffer, self.id = b"", 0
        self._read()  # the server's greeting
        self.cmd("WebDriver:NewSession", {"capabilities": {"alwaysMatch": {"acceptInsecureCerts": True}}})

    def _read(self):
        while b":" not in self.buffer:
            self.buffer += self.sock.recv(65536)
        head, _, rest = self.buffer.partition(b":")
        size = int(head)
        while len(rest) < size:
            rest += self.sock.recv(65536)
        self.buffer = rest[size:]
        return json.loads(rest[:size])

    def cmd(self, name: str, params: dict | None = None):
        self.id += 1
        data = json.dumps([0, self.id, name, params or {}]).encode()
        self.sock.sendall(str(len(data)).encode() + b":" + data)
        while True:
            reply = self._read()
            if reply[0] == 1 and reply[1] == self.id:
                if reply[2]:
                    raise RuntimeError(f"Marionette {name}: {reply[2]}")
                return reply[3]

    def get(self, url: str) -> None:
        self.cmd("WebDriver:Navigate", {"url": url})

    def js(self, script: str, *args):
        """Run `script` with `args` (JSON values) as arguments[0], ..."""
        return self.cmd("WebDriver:ExecuteScript", {"script": script, "args": list(args)}).get("value")

    def click(self, css: str) -> None:
        element = self.cmd("WebDriver:FindElement", {"using": "css selector", "value": css})["value"]
        self.cmd("WebDriver:ElementClick", {"id": element[ELEMENT] if isinstance(element, dict) else element})

    def screenshot_png(self) -> bytes:
        return base64.b64decode(self.cmd("WebDriver:TakeScreenshot", {"full": False})["value"])


@contextlib.contextmanager
def firefox():
    """Headless Firefox ESR with a fresh profile (FIREFOX_PREFS), WebGL on EGL (FIREFOX_ENV), a null
    audio output (`null_audio_output`) and a Marionette session."""
    import shutil
    import tempfile

    port = free_port()
    profile = Path(tempfile.mkdtemp(prefix="blendtalk-firefox-"))
    prefs = dict(FIREFOX_PREFS, **{"marionette.port": port})
    (profile / "user.js").write_text("".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in prefs.items()))
    audio = contextlib.ExitStack()
    audio_env = audio.enter_context(null_audio_output())
    proc = subprocess.Popen([str(FIREFOX), "--headless", "--marionette", "--no-remote", "--profile", str(profile),
                             "--width", "1280", "--height", "1400"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **FIREFOX_ENV, **audio_env})
    try:
        driver = Marionette(port)
        try:
            yield driver
        finally:
            try:
                driver.cmd("WebDriver:DeleteSession")
            except (RuntimeError, OSError):
                pass
            driver.sock.close()
    finally:
        stop_process(proc, 15)
        audio.close()
        shutil.rmtree(profile, ignore_errors=True)
