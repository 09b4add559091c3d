"""The app in a real browser: headless Chromium driven through chromedriver's W3C WebDriver API.

Speaks WebDriver over HTTP with httpx (already a gradio dependency), so no selenium/playwright is
needed. Skipped when /usr/bin/chromium or /usr/bin/chromedriver is missing
(`apt-get install chromium chromium-driver`). Opens the page, uploads a wav, chooses an emotion,
clicks Generate, and checks that the <video> plays with the audio's duration and that the Plotly
face rendered inside its iframe; the screenshot is saved under tmp_path and its path printed.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from blendtalk.constants import ASSETS_DIR
from blendtalk.evaluation.browser import (WebDriver, available, chrome, fake_microphone_flags, firefox, firefox_available,
                                         free_port)
from tests.test_app import launch_app

WAV = ASSETS_DIR / "audio" / "arctic_a0009.wav"
KEY_ENTER, KEY_BACKSPACE = "\ue007", "\ue003"

pytestmark = pytest.mark.slow
needs_chromium = pytest.mark.skipif(not available(), reason="needs /usr/bin/chromium and /usr/bin/chromedriver "
                                    "(apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def browser():
    with chrome() as driver:
        yield driver


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    # The page keeps fetching the video while it plays: results must outlive the test's steps.
    with launch_app(tmp_path_factory.mktemp("browser_app"), "--delete-cache", "60", "600") as (url, _):
        yield url


def generate_in_browser(browser: WebDriver, url: str, wav: Path, emotion: str) -> dict:
    """Open the page, upload `wav`, choose `emotion`, click Generate; wait until the video can play.

    Returns {'page_load_s', 'click_to_video_s'}: DOMContentLoaded + the Generate button shown, and
    the click until the <video> has its data (readyState >= 3).
    """
    t0 = time.perf_counter()
    browser.get(url)
    button = browser.wait_for("#generate")
    page_load = time.perf_counter() - t0
    # Gradio's upload area holds a hidden <input type=file>; WebDriver sends it the file path.
    upload = browser.wait_for("#speech input[type=file]")
    browser.type(upload, str(wav))
    browser.wait_for("#speech audio, #speech .waveform-container, #speech button[aria-label='Clear']", timeout=30)
    choice = browser.find("#emotion input")
    browser.click(choice)
    browser.type(choice, KEY_BACKSPACE * 12 + emotion + KEY_ENTER)
    assert browser.js("return arguments[0].value", choice) == emotion
    t1 = time.perf_counter()
    browser.click(button)
    wait_playable(browser, "the video")
    return {"page_load_s": page_load, "click_to_video_s": time.perf_counter() - t1}


def wait_playable(browser, what: str, timeout: float = 180) -> list:
    """Wait until the result video can play; returns [readyState, duration, currentSrc]."""
    ready, end = None, time.perf_counter() + timeout
    while time.perf_counter() < end:
        ready = browser.js("const v = document.querySelector('#video video');"
                           "return v ? [v.readyState, v.duration, v.currentSrc] : null;")
        if ready and ready[0] >= 3:
            return ready
        time.sleep(0.1)
    raise AssertionError(f"{what} never became playable: {ready}")


@contextmanager
def live_page_with_microphone(url: str):
    """Chromium with the ARCTIC wav as its fake microphone, on the live page at `url`, once the
    page's face has loaded."""
    with chrome(*fake_microphone_flags(WAV)) as page:
        page.get(url)
        end = time.monotonic() + 60
        while not page.js("return !!(window.liveStats && window.liveStats.loaded)"):
            assert time.monotonic() < end, "the live page did not load its face"
            time.sleep(0.2)
        yield page


def mouth_moves_then_rests(history: np.ndarray, speech_end: float, min_playing: int, min_after: int = 10) -> None:
    """The page's mouth history (n, 5) (time ms, jawOpen, mouthClose, funnel, audio time s) moves while
    the speech plays (0.3 s to `speech_end`) and rests a second after it. Windows by the frames' own
    audio time, not by arrival: a starved server (a CI series beside it) delivers the last frames
    seconds late, and they must not count as the mouth at rest."""
    t = history[:, 4]
    playing, after = history[(t > 0.3) & (t < speech_end)], history[t > speech_end + 1.2]
    assert len(playing) > min_playing and len(after) > min_after, (len(playing), len(after))
    moving, resting = playing[:, 1:4].std(0).max(), after[:, 1:4].std(0).max()
    print(f"mouth weight spread while speaking {moving:.3f}, after {resting:.4f}")
    assert moving > 0.05 and resting < 0.2 * moving, (moving, resting)


@needs_chromium
def test_generate_in_browser(browser, app_url, tmp_path):
    times = generate_in_browser(browser, app_url, WAV, "sad")
    print(f"\npage load {times['page_load_s']:.2f} s, click -> playable video {times['click_to_video_s']:.2f} s")
    seconds = sf.info(str(WAV)).duration

    duration = browser.js("return document.querySelector('#video video').duration")
    assert abs(duration - seconds) < 0.15, (duration, seconds)
    played = browser.js_async(
        "const [v, done] = [document.querySelector('#video video'), arguments[arguments.length - 1]];"
        "v.muted = true; v.play().then(() => setTimeout(() => done([v.currentTime, v.paused, v.error]), 800),"
        " (e) => done(['play failed: ' + e]));")
    assert isinstance(played[0], float) and played[0] > 0.2 and played[2] is None, played

    # The animated face: the iframe from figure_html, with plotly.js served by the app itself.
    iframe = browser.wait_for("#mesh iframe", timeout=60)
    browser.js("arguments[0].scrollIntoView()", iframe)
    browser.frame(iframe)
    try:
        plot = browser.wait_for(".js-plotly-plot", timeout=30)
        info = browser.js("const p = arguments[0]; return [typeof Plotly, (p._transitionData || {})._frames ?"
                          " p._transitionData._frames.length : 0, p.querySelectorAll('canvas').length];", plot)
    finally:
        browser.frame(None)
    assert info[0] == "object", "plotly.js did not load in the iframe"
    assert info[1] > 10, f"the figure has no animation frames: {info}"
    assert info[2] >= 1, f"no WebGL canvas in the plot: {info}"
    # Upright: the lips (reddish pixels) lie below the middle of the face (skin-coloured pixels).
    rgb = np.asarray(Image.open(browser.screenshot(tmp_path / "face.png", iframe)).convert("RGB")).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    skin_rows = np.nonzero((r > 180) & (r - b > 30))[0]
    lip_rows = np.nonzero((r > 120) & (r - g > 70))[0]
    assert len(skin_rows) > 1000 and len(lip_rows) > 50, (len(skin_rows), len(lip_rows))
    assert lip_rows.mean() > skin_rows.mean(), "the 3D face is upside down"
    curves = browser.wait_for("#curves .js-plotly-plot", timeout=30)
    assert curves
    # The second view: the rig's GLB in gr.Model3D, its ARKit curves playing (Babylon autoplays glTF animations).
    browser.js("arguments[0].scrollIntoView()", browser.find("#rig3d"))
    rig3d = browser.wait_for("#rig3d canvas", timeout=60)
    time.sleep(5)  # the viewer loads Babylon.js and the GLB
    shots = []
    for k in range(3):
        shots.append(np.asarray(Image.open(browser.screenshot(tmp_path / f"rig3d_{k}.png", rig3d)).convert("RGB")).astype(int))
        time.sleep(0.7)
    face = np.abs(shots[0] - shots[0][0, 0]).sum(-1) > 30  # pixels off the background
    moved = max(int((np.abs(a - b).sum(-1) > 30).sum()) for a, b in zip(shots, shots[1:]))
    assert face.sum() > 5000 and moved > 20, (int(face.sum()), moved)
    downloads = browser.js("return document.querySelectorAll('#downloads a').length")
    assert downloads >= 5, downloads
    # Files are named by the cache's public name, not by the server's folders (blendtalk.path_mask).
    links = browser.js("return [document.querySelector('#video video').src,"
                       " ...[...document.querySelectorAll('#downloads a')].map(a => a.href)]")
    assert all("file=blendtalk-cache/" in link and "/tmp/" not in link for link in links), links
    status = browser.js("return document.querySelector('#status').innerText")
    assert "sad" in status, status

    shot = browser.screenshot(tmp_path / "app.png")
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000


@needs_chromium
def test_blendshape_explorer_moves_the_face(browser, app_url):
    browser.get(app_url)
    browser.wait_for("#generate")
    browser.js("Array.from(document.querySelectorAll('button[role=tab]')).find(b => b.innerText.includes('Blendshapes')).click()")
    plot = browser.wait_for("#face .js-plotly-plot", timeout=30)
    # The face trace's coordinates as plotly holds them (base64 int16 from the server).
    shape = "const d = arguments[0].data[0]; return JSON.stringify([d.x, d.y, d.z]);"
    before = browser.js(shape, plot)
    assert len(before) > 10_000, before[:200]
    # The tab's components mount on first visit and can be swapped once more while it settles; type
    # again until the box holds the value, so that a lost keystroke is not mistaken for a stuck face.
    value = "return document.querySelector('#face-sliders input[type=number]').value;"
    for _ in range(5):
        number = browser.find("#face-sliders input[type=number]")
        browser.click(number)
        browser.type(number, KEY_BACKSPACE * 4 + "1" + KEY_ENTER)
        time.sleep(0.3)
        if float(browser.js(value) or 0) == 1:
            break
    assert float(browser.js(value)) == 1, "could not type into the first blendshape slider"
    t0 = time.perf_counter()
    after, typed = before, 1
    while after == before and time.perf_counter() - t0 < 30:
        time.sleep(0.1)
        after = browser.js(shape, browser.find("#face .js-plotly-plot"))
        if after == before and time.perf_counter() - t0 > 10 * typed:  # the tab settling can swallow the
            typed += 1  # first change event (seen once under a loaded CI machine): move the slider again
            number = browser.find("#face-sliders input[type=number]")
            browser.click(number)
            browser.type(number, KEY_BACKSPACE * 4 + ("0.5" if typed % 2 == 0 else "1") + KEY_ENTER)
    print(f"\nslider -> new face {time.perf_counter() - t0:.2f} s, {typed} value(s) typed")
    assert after != before, "moving a blendshape slider did not change the face"


@needs_chromium
def test_live_tab_face_follows_the_microphone(app_url, tmp_path):
    """Chromium's fake microphone plays the ARCTIC sentence once: the page's face moves while it plays
    (about 30 distinct weight frames applied per second on a quiet machine; the bound below leaves room
    for a loaded one, where 21 were seen) and its mouth rests after it."""
    with live_page_with_microphone(app_url + "live/") as page:
        # Downloads are caught, not saved: the page's anchors hand their file name and blob here.
        page.js("window.downloads = []; HTMLAnchorElement.prototype.click = function () { window.downloads.push([this.download, this.href]); };")
        page.click(page.find("#start"))
        samples, t0 = [], time.monotonic()
        while time.monotonic() - t0 < 9:
            time.sleep(0.25)
            samples.append(page.js("const s = window.liveStats; return [performance.now(), s.received, s.applied, s.fps,"
                                   " s.status, s.errors];"))
        history = np.array(page.js("return window.liveStats.mouthHistory"))  # (n, 5): time ms, jawOpen, mouthClose, funnel, t s
        latency = page.js("return window.liveStats.latency")
        shot = page.screenshot(tmp_path / "live.png")
        print(f"\nlive page screenshot: {shot}")
        # Stop, then Save: the take the server kept, as the CLI's --save-csv writes it (Live Link Face's layout).
        page.click(page.find("#stop"))
        end = time.monotonic() + 30
        while page.js("return document.getElementById('save-mp4').disabled"):  # enabled once the server named the take
            assert time.monotonic() < end, "the server did not name the take"
            time.sleep(0.2)
        page.click(page.find("#save"))
        while not page.js("return window.downloads.length"):
            assert time.monotonic() < end, "Save gave no file"
            time.sleep(0.2)
        name, blob = page.js("return window.downloads[0]")
        saved = page.js_async(f"fetch({json.dumps(blob)}).then(r => r.text()).then(arguments[arguments.length - 1]);")
        said = page.js("return window.liveStats.status")
    assert name == "blendtalk-live-take.csv" and saved.startswith("Timecode,BlendShapeCount,EyeBlinkLeft,"), saved[:100]
    assert said == "Saved the take's curves (ARKit CSV).", said
    assert len(saved.strip().splitlines()) > 30
    assert not samples[-1][5], f"the page reported errors: {samples[-1][5]}"
    # The sentence is 93 frames. A starved server drops audio to catch up with the clock, by design,
    # and says so in the page's status: a second of it at load 8, two at load 6 with the full suite
    # run beside a CI series (29 frames came). Without that notice nearly all must come.
    caught_up = any("behind real time" in str(s[4]) for s in samples)
    assert samples[-1][1] > (15 if caught_up else 45), f"too few frames received: {samples[-1]}"
    fps = max(s[3] for s in samples)
    print(f"weight frames applied per second (max over 1 s windows): {fps}; "
          f"own audio -> weights in the page: p50 {np.percentile(latency, 50):.0f} ms, p95 {np.percentile(latency, 95):.0f} ms")
    assert fps >= 10, samples  # a rate target belongs to eval/live_latency.py, not a test
    # The sentence is 3.1 s, speech from about 0.2 s to 2.9 s; fewer frames when a busy CPU thins them
    # or the server drops audio to catch up.
    mouth_moves_then_rests(history, 2.8, 5 if caught_up else 20)
    assert shot.stat().st_size > 10_000


def test_an_example_runs_and_plays_under_the_public_cache_name(browser, app_url):
    """An example's audio is copied into the cache and its result cached lazily: both reach the page,
    and play, under the cache's public names (blendtalk.path_mask), never the server's folders."""
    browser.get(app_url)
    browser.wait_for("#generate")
    # The examples: a labelled button each, under the Generate button. They mount after it: on a
    # loaded machine (load 8) the first look found none.
    end, clicked = time.monotonic() + 60, None
    while not clicked and time.monotonic() < end:
        clicked = browser.js("const b = [...document.querySelectorAll('button')].find(b => /^\\s*sad: /.test(b.textContent));"
                             "if (!b) return null; b.click(); return b.textContent;")
        time.sleep(0.0 if clicked else 0.25)
    assert clicked, "no example of the sad clip on the page"
    assert browser.js("const b = document.querySelector('#generate'), e = [...document.querySelectorAll('button')]"
                      ".find(b => /^\\s*sad: /.test(b.textContent));"
                      "return e.getBoundingClientRect().top > b.getBoundingClientRect().bottom;"), "examples not under Generate"
    source = wait_playable(browser, "the example's video")[2]
    assert "file=blendtalk-" in source and "/tmp/" not in source, source
    audio = browser.js("const a = document.querySelector('#speech audio'); return a ? a.currentSrc || a.src : null;")
    assert audio is None or ("/tmp/" not in audio and "assets/" not in audio), audio


@pytest.fixture(scope="module")
def live_url(pipe_for_live):
    """The live routes alone on a local port (the Live tab without the rest of the app)."""
    from eval.live_legibility import serve_live

    url, server = serve_live(pipe_for_live, free_port())
    yield url
    server.should_exit = True


@pytest.fixture(scope="module")
def pipe_for_live():
    from blendtalk.pipeline import Pipeline

    return Pipeline.from_pretrained(device="cpu")


def resample_tone(page, rate: int, freq: float) -> list:
    """One second of a unit sine at `rate` through the page's resampler in 128-sample blocks (the audio
    worklet's) -> [samples out, RMS past the filter's delay]."""
    return page.js(f"""
const rate = {rate}, freq = {freq}, x = new Float32Array(rate), toRate = window.liveResampler(rate), out = [];
for (let i = 0; i < rate; i++) x[i] = Math.sin(2 * Math.PI * freq * i / rate);
for (let i = 0; i < rate; i += 128) out.push(...toRate(x.subarray(i, i + 128)));
const tail = out.slice(1600);
return [out.length, Math.sqrt(tail.reduce((a, v) => a + v * v, 0) / tail.length)];""")


@needs_chromium
def test_the_pages_resampler_keeps_speech_and_drops_what_would_alias(browser, live_url):
    """A browser that refuses a 16 kHz audio context hands the page 44.1 or 48 kHz: one second of a
    tone, in 128-sample blocks, comes out as 16,000 samples; 1 kHz keeps its level (RMS 0.707) and
    tones above 8 kHz, which plain interpolation would fold into the speech band, are gone."""
    browser.get(live_url)
    end = time.monotonic() + 60
    while not browser.js("return !!window.liveResampler"):
        assert time.monotonic() < end, "the live page did not load its script"
        time.sleep(0.2)
    for rate in (48000, 44100):
        length, kept = resample_tone(browser, rate, 1000)
        assert abs(length - 16000) <= 1 and kept == pytest.approx(0.7071, abs=0.005), (rate, length, kept)
        for tone in (9000, 12000, 20000):
            assert resample_tone(browser, rate, tone)[1] < 0.01, (rate, tone)
    length, kept = resample_tone(browser, 8000, 1000)  # a narrow-band device: interpolated up
    assert abs(length - 16000) <= 2 and kept > 0.65, (length, kept)


@needs_chromium
def test_live_page_at_48_khz_resamples_the_microphone(live_url):
    """?audio-rate=48000 makes the page's audio run at 48 kHz, as a browser that refuses 16 kHz does:
    the ARCTIC sentence still moves the face while it plays, and the mouth rests after it."""
    with live_page_with_microphone(live_url + "?audio-rate=48000") as page:
        page.click(page.find("#start"))
        statuses, t0 = [], time.monotonic()
        while time.monotonic() - t0 < 8:
            time.sleep(0.25)
            statuses.append(page.js("return window.liveStats.status"))
        rate, received, errors = page.js("const s = window.liveStats; return [s.audioRate, s.received, s.errors];")
        history = np.array(page.js("return window.liveStats.mouthHistory"))
    assert rate == 48000 and not errors, (rate, errors)
    # A starved server (a loaded machine) drops audio to catch up, by design, and says so.
    caught_up = any("behind real time" in str(s) for s in statuses)
    assert received > (15 if caught_up else 30), received
    mouth_moves_then_rests(history, 2.8, 5 if caught_up else 10)


@needs_chromium
def test_a_microphone_that_vanishes_mid_stream_gets_one_line(live_url):
    """A microphone unplugged mid-stream ends its track: the page says so in one line, ends the
    session (no more frames) and offers Start again, instead of listening to nothing."""
    with live_page_with_microphone(live_url) as page:
        page.js("const gum = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);"
                "navigator.mediaDevices.getUserMedia = async (c) => (window.testStream = await gum(c));")
        page.click(page.find("#start"))
        end = time.monotonic() + 60
        while page.js("return window.liveStats.received") < 5:
            assert time.monotonic() < end, "no frames came"
            time.sleep(0.2)
        page.js("window.testStream.getAudioTracks()[0].dispatchEvent(new Event('ended'));")  # what unplugging fires
        time.sleep(1.0)
        status, errors, received = page.js("const s = window.liveStats; return [s.status, s.errors, s.received];")
        start_enabled = page.js("return !document.getElementById('start').disabled")
        time.sleep(1.5)
        later = page.js("return window.liveStats.received")
    assert "The microphone stopped" in status and len(errors) == 1, (status, errors)
    assert start_enabled
    assert later - received <= 3, (received, later)  # the session ended: frames stop (a few in flight)


# Firefox plays no file as its microphone (its fake device is a tone): the test hands the page a
# stream of the wav played through Web Audio instead, at the audio device's own rate, as a real
# microphone runs. In Firefox the page's context runs at that rate too (older Firefox connects a
# stream only to a context of its own rate) and the page resamples to 16 kHz.
FILE_MICROPHONE = """
const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
navigator.mediaDevices.getUserMedia = async () => {
  const ctx = new AudioContext();
  await ctx.resume();
  const source = ctx.createBufferSource();
  source.buffer = await ctx.decodeAudioData(bytes.buffer);
  const out = ctx.createMediaStreamDestination();
  source.connect(out);
  const silence = ctx.createConstantSource();  // keeps the stream going (silent) after the file, as a microphone does
  silence.offset.value = 0;
  silence.connect(out);
  silence.start();
  source.start();
  window.fileMicrophone = { started: performance.now(), seconds: source.buffer.duration };
  return out.stream;
};
return true;
"""


@pytest.mark.skipif(not firefox_available(), reason="needs /usr/bin/firefox-esr and /usr/bin/pulseaudio "
                                                   "(apt-get install firefox-esr pulseaudio)")
def test_live_page_in_firefox(live_url):
    """Firefox ESR through its own Marionette server (no geckodriver here), with WebGL on Mesa's
    llvmpipe (browser.FIREFOX_ENV): the ARCTIC sentence plays once as the microphone, the face moves
    while it plays and its mouth rests after it. Where Firefox has no WebGL 2 the page says so in
    one line and offers no Start button that would fail."""
    import base64

    with firefox() as page:
        page.get(live_url)
        end = time.monotonic() + 90
        while not page.js("return !!(window.liveStats && (window.liveStats.loaded || window.liveStats.errors.length))"):
            assert time.monotonic() < end, "the live page neither loaded its face nor said why"
            time.sleep(0.3)
        if not page.js("return !!document.createElement('canvas').getContext('webgl2')"):
            message = page.js("return document.getElementById('status').textContent")
            print(f"\nFirefox without WebGL 2: {message}")
            assert "WebGL" in message and page.js("return document.getElementById('start').disabled")
            return
        assert page.js("return window.liveStats.look"), "the page fell back from the file renderer's look"
        page.js(FILE_MICROPHONE, base64.b64encode(WAV.read_bytes()).decode())
        page.click("#start")
        samples, t0 = [], time.monotonic()
        while time.monotonic() - t0 < 9:
            time.sleep(0.25)
            samples.append(page.js("const s = window.liveStats; return [s.received, s.applied, s.fps, s.errors];"))
        history = np.array(page.js("return window.liveStats.mouthHistory"))  # (n, 5): time ms, jawOpen, mouthClose, funnel, t s
        played = page.js("return window.fileMicrophone")
        rate = page.js("return window.liveStats.audioRate")
    received, applied, fps, errors = samples[-1]
    print(f"\nFirefox: audio at {rate} Hz; {received} frames received, {applied} applied, "
          f"at most {max(s[2] for s in samples)} frames/s")
    assert not errors and applied > 60, samples[-1]
    assert rate > 16000, rate  # the device's rate, resampled by the page
    mouth_moves_then_rests(history, played["seconds"] - 0.2, 10)  # the file plays from the session's start
