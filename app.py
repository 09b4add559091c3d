"""blendtalk browser demo (Gradio 6): speech + an emotion -> a talking 3D face.

    python app.py [--port 7860] [--size 256]          # GRADIO_SERVER_NAME / GRADIO_SERVER_PORT honoured

Tab "Animate": speech by upload, microphone or typed text (built-in TTS), an optional transcript,
an emotion with intensity, an optional second emotion and mix ratio, an optional emotion timeline,
blinks and head and eye motion -> the mp4 with sound, the animated Plotly mesh, the blendshape weight curves and the
downloads. The same work is the API endpoint `/animate` (gradio_client). Tab "Blendshapes": pose
the DFM's learned speech or expression blendshapes with sliders.

Files: everything made for a request goes into its own folder under the app's work folder
(`--workdir`, default a fresh temporary folder removed at exit) and is deleted as soon as Gradio
has copied the results into its cache; Gradio's cache (uploads and results, inside the work folder
unless GRADIO_TEMP_DIR is set) is emptied of files older than `--delete-cache AGE` seconds; clients
see it as `blendtalk-cache/...`, never as a server folder (blendtalk.path_mask). The per-address
limits take the client from X-Forwarded-For only behind `--trusted-proxies`. A request whose client
has left stops at its next progress report (between stages and frame batches) and frees its worker.
Memory: start-up objects are frozen out of the garbage collector's scans, a collection follows every
request, glibc gets 2 malloc arenas, and Gradio's unread per-session messages are forgotten after
the results' keep time (blendtalk.serving). The pipeline is loaded once, at start-up. With the
`spaces` package (a ZeroGPU Space) the model and rendering work runs inside `@spaces.GPU`.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import csv
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from blendtalk import serving
from blendtalk.constants import ASSETS_DIR, SAMPLE_RATE
from blendtalk.request import MAX_TEXT_CHARS, MAX_TRANSCRIPT_CHARS

logger = logging.getLogger("blendtalk.app")

MAX_AUDIO_SECONDS = 60.0  # s of speech per request: render time and download sizes grow with it
MAX_UPLOAD = "20mb"  # per uploaded file: a minute of 48 kHz stereo 16-bit wav is 11.5 MB
VIDEO_SIZES = serving.VIDEO_SIZES  # px; one list for the menu and the budget's advice
# The page's default size: the sharpest of VIDEO_SIZES that the cost budget allows for the clip's
# length (512 px up to 15 s of speech by default), so a short clip is not blurred to spare a long one.
AUTO_SIZE = "auto"
FIGURE_FRAMES = 90  # frames in the Plotly animation: about 1.3 MB of page for the rig (viz.figure_html)
SLIDERS_PER_ROW = 2  # blendshape sliders side by side in the explorer
SLIDER_PEAK_M = 0.010  # m: a blendshape slider at +-1 moves its most-moved vertex by 10 mm
QUEUE_SIZE = 16  # requests waiting at most; more are refused with "queue full"
CONCURRENCY = 2  # animations computed at once
REQUEST_KEEP_S = 600.0  # s: a request folder left behind (an example run, a crash) is swept after this
MAX_FAILURES = 256  # failed requests whose reason waits for the page's status line
DELETE_CACHE = (60, 600)  # s: every minute, Gradio's cached uploads/results older than 10 min are deleted
CACHE_MAX_MB = 2048  # MB Gradio's cache may hold (10-20 MB a result); over it the oldest files go first
CACHE_MIN_AGE_S = 300  # s: the cap deletes no younger file (uploads wait in the queue: 16 x ~20 s / 2 workers)
# Sessions whose state Gradio keeps (each a copy of the page's values with its outputs: the 3D view is
# a few MB); Gradio's default is 10,000. Nothing of ours needs an earlier event's state.
STATE_SESSIONS = 8
EXAMPLES_DIR = ASSETS_DIR / "examples"
ARCTIC_DIR = ASSETS_DIR / "audio"
TIMELINE_HINT = "neutral@0 happy@1.5 sad@4.0:0.7"
NO_MIX = ""  # the second-emotion value that means "no mix"
PLOTLY_ROUTE = "blendtalk/plotly.min.js"  # where the app serves plotly.js (add_file_routes)
BLENDER_ROUTE = "blendtalk/blendtalk_blender.py"  # the Blender add-on (blendtalk/clients/blender.py), for the ARKit downloads
PUBLIC_CACHE = "blendtalk-cache"  # what clients see in place of Gradio's cache folder (blendtalk.path_mask)
PUBLIC_EXAMPLES = "blendtalk-examples"  # ... and of the cached examples' folder

try:  # a ZeroGPU Space: the GPU is attached only inside functions decorated with spaces.GPU
    import spaces

    GPU = spaces.GPU(duration=120)
except ImportError:
    spaces = None

    def GPU(fn):
        return fn


# ---------------------------------------------------------------------------------------------
# The app's work folder


@dataclass
class Workspace:
    """The folder this app owns: request folders under requests/, Gradio's cache under gradio/.

    Request folders older than `keep_s` seconds are swept (by `prune`, called for each request and
    by a background thread), so nothing piles up even when a request dies half-way.
    """

    root: Path
    keep_s: float = REQUEST_KEEP_S

    def __post_init__(self):
        self.root = Path(self.root).resolve()
        self.requests.mkdir(parents=True, exist_ok=True)

    @property
    def requests(self) -> Path:
        return self.root / "requests"

    def new_request(self) -> Path:
        self.prune()
        folder = self.requests / f"{time.time_ns()}-{uuid.uuid4().hex[:8]}"
        folder.mkdir()
        return folder

    def prune(self) -> None:
        now = time.time()
        for folder in self.requests.iterdir():
            try:
                if now - folder.stat().st_mtime > self.keep_s:
                    shutil.rmtree(folder, ignore_errors=True)
            except FileNotFoundError:
                continue  # removed by its own request meanwhile

    def start_sweeper(self, every_s: float, also=None) -> None:
        """Every `every_s` seconds, prune request folders and call `also()` (if given)."""
        def sweep():
            while True:
                time.sleep(every_s)
                self.prune()
                if also is not None:
                    also()

        threading.Thread(target=sweep, name="blendtalk-sweeper", daemon=True).start()


def clear_gradio_cache(demo, age_s: float) -> None:
    """Delete Gradio's cached files of `demo` older than `age_s` (as `delete_cache` does).

    Gradio's own scheduled deletion iterates sets that request threads add to, so under concurrent
    requests it can die of "Set changed size during iteration" and never run again; this retries.
    """
    from gradio.route_utils import delete_files_created_by_app

    for _ in range(5):
        try:
            delete_files_created_by_app(demo, age_s)
            return
        except RuntimeError:
            time.sleep(0.1)


def setup_workspace(workdir: str | None) -> Workspace:
    """The work folder (created; a temporary one, removed at exit, when `workdir` is None) and
    Gradio's cache folders inside it unless GRADIO_TEMP_DIR / GRADIO_EXAMPLES_CACHE are set. Must
    run before gradio is imported: it reads GRADIO_TEMP_DIR at import."""
    if workdir:
        root = Path(workdir)
        root.mkdir(parents=True, exist_ok=True)
    else:
        root = Path(tempfile.mkdtemp(prefix="blendtalk-app-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
    os.environ.setdefault("GRADIO_TEMP_DIR", str(root.resolve() / "gradio"))
    os.environ.setdefault("GRADIO_EXAMPLES_CACHE", str(root.resolve() / "examples"))
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no phoning home
    return Workspace(root)


# ---------------------------------------------------------------------------------------------
# The model work


def animate_and_render(pipe, request, video: Path, progress=None):
    """An AnimationRequest -> the Animation made by `pipe` (a loaded Pipeline); writes `video`.
    Requests run side by side: the pipeline is safe to share."""
    def stage(start, span):
        def report(fraction, what):
            if progress is not None:
                progress(start + span * fraction, desc=what)
        return report

    anim = pipe.run(request, progress=stage(0.02, 0.38))
    pipe.save_video(anim, video, size=request.size, progress=stage(0.4, 0.6))
    return anim


def warm_up(pipe, size: int) -> None:
    """Load the lazy parts (aligner, TTS, phone recogniser, decoder, resampler, renderer) now, not on
    the first user's click."""
    import soundfile
    import soxr

    from blendtalk.speech.tts import synthesize

    t0 = time.perf_counter()
    speech, _ = synthesize("Hello there.")  # as audio, so the phone recogniser loads too
    with tempfile.TemporaryDirectory() as tmp:  # a 44.1 kHz file, as most uploads are: decoder and resampler load too
        upload = Path(tmp) / "warm-up.wav"
        soundfile.write(upload, soxr.resample(speech, SAMPLE_RATE, 44_100), 44_100)
        pipe.renderer(size)(pipe.animate(upload).vertices[:2])
    logger.info("warm-up took %.1f s", time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# One request


def public_lines(lines: list[str]) -> list[str]:
    """Lines for the page with every absolute path cut to its last part ("shipped /srv/x/assets/dfm"
    -> "shipped dfm"): where the server keeps its files is nobody's business on a public page."""
    return [re.sub(r"(?<![\w.])/[^\s(),]+", lambda m: Path(m.group(0)).name, line) for line in lines]


def public_text(text: str) -> str:
    """`text` with absolute paths cut to their last part (as `public_lines`): decoders name the server's upload copy."""
    return "\n".join(public_lines(text.splitlines()))


def size_choice(size) -> int | str:
    """The page's video size (the dropdown's text "256", a number from the API, or AUTO_SIZE) -> px
    or AUTO_SIZE; ValueError for anything else."""
    if isinstance(size, str) and size.strip().lower() == AUTO_SIZE:
        return AUTO_SIZE
    if isinstance(size, str) and size.strip().isdigit():
        size = int(size)
    if isinstance(size, bool) or size not in VIDEO_SIZES:
        raise ValueError(f"The video size must be {AUTO_SIZE} or one of {', '.join(map(str, VIDEO_SIZES))} px, got {size!r}.")
    return size


def size_pixels(choice: int | str, seconds: float, max_cost: float) -> int:
    """px of a `size_choice` for `seconds` of speech: AUTO_SIZE is the largest that fits `max_cost`."""
    return serving.fitting_size(seconds, VIDEO_SIZES, max_cost) if choice == AUTO_SIZE else choice


def check_request(audio, text, transcript, emotion, intensity, mix_with, mix_ratio, timeline, blinks, size,
                  allowed_dirs, head_motion=True, max_cost=serving.ServingConfig.max_cost):
    """The page's inputs -> a validated blendtalk AnimationRequest, before any slow work; raises
    ValueError with what to change. Checked here only what is the page's own: audio only from
    Gradio's upload folder, a size from the menu (AUTO_SIZE: the largest whose cost fits `max_cost`
    for this speech), at most MAX_AUDIO_SECONDS of speech."""
    from blendtalk.request import AnimationRequest

    choice = size_choice(size)
    if audio is not None:
        audio = Path(str(audio)).resolve()
        # Gradio hands us its own upload copies; anything else is not read on a user's behalf.
        if not any(audio.is_relative_to(Path(d).resolve()) for d in allowed_dirs):
            raise ValueError("The audio must be an uploaded or recorded file.")
    req = AnimationRequest.create(
        audio, text=text, transcript=transcript, emotion=emotion, intensity=intensity, mix_with=mix_with,
        mix_ratio=mix_ratio, timeline=timeline, blinks=blinks, head_motion=head_motion,
        size=max(VIDEO_SIZES) if choice == AUTO_SIZE else choice, max_audio_seconds=MAX_AUDIO_SECONDS)
    return replace(req, size=size_pixels(choice, request_seconds(req), max_cost))


def request_seconds(req) -> float:
    """Seconds of speech of a checked AnimationRequest (typed text: estimated from its length)."""
    return len(req.audio) / SAMPLE_RATE if req.audio is not None else serving.text_seconds(req.text)


def describe(anim, missing: dict[str, str], transcript: str | None = None, size: int | None = None) -> str:
    """The status line under the outputs: what was made (at `size` px), how, and how long each stage
    took; a transcript the aligner could not use, and the downloads `missing` (`exports.unavailable`)."""
    meta = anim.meta
    timings = " · ".join(f"{k} {v:.2f} s" for k, v in meta.get("timings", {}).items())
    frames = f"{anim.num_frames} frames" + (f" at {size} px" if size else "")
    lines = [f"**{anim.duration:.2f} s**, {frames} · expression: {meta['expression']} · "
             f"speech driver: {meta['speech_driver']} · fusion: {meta['method']} · phones: {meta.get('phones', '?')}",
             f"timings: {timings}"]
    if transcript and meta.get("phones") == "recognized":
        lines.append("The transcript did not fit the audio (other words, or none the aligner knows), so the phones "
                     "were recognised from the audio alone; check the transcript for better lip sync.")
    lines += [f"no {fmt} download: {why}" for fmt, why in missing.items()]
    return "\n\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The page


def plotly_js_path() -> Path:
    """plotly.js as shipped in the plotly package (the version its figures are written for)."""
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def add_file_routes(app) -> None:
    """Serve plotly.js at PLOTLY_ROUTE and the Blender add-on at BLENDER_ROUTE (first in the routing
    table, before Gradio's catch-all), so the page names them by these routes, not by their paths on
    the server (`/gradio_api/file=...`)."""
    from starlette.responses import FileResponse
    from starlette.routing import Route

    from blendtalk.clients import blender

    files = {PLOTLY_ROUTE: (plotly_js_path(), "text/javascript", None),
             BLENDER_ROUTE: (blender.__file__, "text/x-python", "blendtalk_blender.py")}
    for route, (path, media_type, download) in files.items():
        async def serve(request, path=path, media_type=media_type, download=download):
            return FileResponse(path, media_type=media_type, filename=download, headers={"Cache-Control": "public, max-age=86400"})

        app.router.routes.insert(0, Route("/" + route, serve))


@dataclass
class Service:
    """What the page's Animate handlers share: the loaded pipeline, the work folder, the serving limits
    and the proxies whose X-Forwarded-For names the client (none: the connection's peer).

    Made once in `main()` (or a test) and handed to `build_demo`; nothing of it is global, so two
    apps with different pipelines or limits can live in one process.
    """

    pipe: object  # a loaded blendtalk Pipeline
    workspace: Workspace
    limits: serving.ServingConfig
    default_size: int | str = AUTO_SIZE  # the page's initial video size: px, or AUTO_SIZE
    trusted: serving.TrustedProxies = field(default_factory=serving.TrustedProxies)

    def __post_init__(self):
        from blendtalk.render.viz import rig_look

        self.gate = serving.Gate(self.limits)
        self.look = rig_look(self.pipe.rig)
        # Served by this app (add_file_routes) so the figure works offline; the srcdoc iframe resolves
        # a relative URL against the page, which also holds behind a proxy's root path.
        self.plotly_url = PLOTLY_ROUTE
        self.allowed_dirs = [os.environ["GRADIO_TEMP_DIR"]]  # uploads, recordings and examples all arrive as copies here
        pipe = self.pipe

        @GPU  # a ZeroGPU Space attaches the GPU only inside this call
        def render(request, video: Path, progress=None):
            return animate_and_render(pipe, request, video, progress)

        self.render = render

    def steps(self, audio, text, transcript, emotion, intensity, mix_with, mix_ratio, timeline, blinks, size,
              folder: Path, progress=None, head_motion=True, admit=None):
        """Yield the outputs (video, mesh html, weights figure, downloads, status) as they become ready."""
        import gradio as gr

        from blendtalk.render.exports import arkit_rig_glb, export_all, offered_formats, unavailable
        from blendtalk.render.viz import animation_figure, figure_html, weights_figure

        pipe = self.pipe
        try:
            req = check_request(audio, text, transcript, emotion, intensity, mix_with, mix_ratio, timeline,
                                blinks, size, self.allowed_dirs, head_motion, self.limits.max_cost)
            if admit is not None:  # the cost budget and the client's running limit (LimitError)
                admit(req)
        except ValueError as err:  # AudioError included
            raise gr.Error(public_text(str(err)), title="Please check the input", print_exception=False) from None
        stem = "blendtalk_timeline" if req.expression.timeline else f"blendtalk_{req.expression.emotion}"
        video = folder / f"{stem}.mp4"
        try:
            anim = self.render(req, video, progress)
        except ValueError as err:  # e.g. text the TTS cannot speak
            raise gr.Error(public_text(str(err)), title="Please check the input", print_exception=False) from None
        yield str(video), "", None, None, describe(anim, {}, req.transcript, req.size) + "\n\nbuilding the 3D view and downloads…"
        # No progress() from here on: Gradio would lay its progress overlay over the playable video.
        figure = animation_figure(anim, rig=self.look, max_frames=FIGURE_FRAMES)
        html = figure_html(figure, height=figure.layout.height + 40, include_plotlyjs=self.plotly_url)  # no inner scroll bar
        curves = weights_figure(anim)
        formats = offered_formats(anim)
        missing = unavailable(anim, formats)
        written = export_all(anim, folder / "downloads", formats, stem=stem, template=pipe.rig.vertices,
                             dressing=pipe.dressing())
        files = [str(video)] + [str(p) for p in written.values()]
        if anim.arkit_weights is not None:  # the rig with its ARKit units as morph targets, played by the curves
            files.append(str(arkit_rig_glb(anim, folder / "downloads" / f"{stem}_rig.glb", pipe.rig, pipe.dressing())))
        yield str(video), html, curves, files, describe(anim, missing, req.transcript, req.size)

    def admitted_steps(self, client: str, *inputs, progress=None, alive=None):
        """`steps` for one client of the page, counted and held to the limits, in its own request folder
        removed after the last output; failures other than bad input become one line. `alive()` (if
        given) says whether the client still waits: asked at every progress report, so a request whose
        client left stops between stages or frame batches and frees its worker."""
        import gradio as gr

        try:
            self.gate.count(client)
        except serving.LimitError as err:
            raise gr.Error(str(err), title="Please wait", print_exception=False) from None
        folder = self.workspace.new_request()
        start = time.monotonic()
        if alive is not None:
            progress = serving.cancellable(progress, alive)
        *page, head_motion = inputs
        try:
            # The client's running place, from admission to the last output (measured only when it ends normally).
            with contextlib.ExitStack() as held:
                yield from self.steps(*page, folder, progress, head_motion, admit=lambda req: held.enter_context(
                    self.gate.running(client, serving.check_cost(request_seconds(req), req.size, self.limits.max_cost))))
        except serving.Cancelled as stop:
            logger.info("request of %s %s after %.1f s: its client left", client, stop, time.monotonic() - start)
        except gr.Error:
            raise
        except Exception:
            logger.exception("request failed")
            raise gr.Error("Something went wrong while animating; the details are in the server log. "
                           "Try again, or with other input.") from None
        finally:
            # Runs when Gradio asks for the next value after the last one, i.e. after it copied the
            # files into its cache (or when the request is cancelled): the folder is no longer needed.
            shutil.rmtree(folder, ignore_errors=True)
            serving.collect_garbage()  # the request's figures are cycles of tens of MB

    def estimate(self, demo, audio, text, size) -> str:
        """The status line shown at once on Generate: requests ahead and the estimated wait."""
        seconds = serving.upload_seconds(audio) if audio else serving.text_seconds((text or "").strip())
        try:
            choice = size_choice(size)
        except ValueError:  # the request itself reports it
            choice = size_choice(self.default_size)
        cost = serving.request_cost(seconds or 0.0, size_pixels(choice, seconds or 0.0, self.limits.max_cost))
        return self.gate.describe_wait(serving.waiting_requests(demo, "animate"), cost)

    def run_example(self, audio, text, transcript, emotion, intensity):
        # Example caching consumes every value before copying the files, so the folder stays for the sweeper.
        out = None
        for out in self.steps(audio, text, transcript, emotion, intensity, NO_MIX, 0.5, "", True, self.default_size,
                              self.workspace.new_request()):
            pass
        return out


def rig_view(files):
    """The `_rig.glb` among the downloads (for gr.Model3D), or None."""
    return next((str(f) for f in files or [] if str(f).endswith("_rig.glb")), None)


def build_demo(service: Service, delete_cache: tuple[int, int] = DELETE_CACHE):
    """The Gradio Blocks of the app serving `service`'s pipeline under its limits."""
    import gradio as gr

    pipe = service.pipe
    with gr.Blocks(title="blendtalk", delete_cache=tuple(delete_cache), analytics_enabled=False) as demo:
        gr.Markdown("# blendtalk\nEmotional 3D talking faces: speech and an emotion in, an animated face out.")
        with gr.Accordion("Models in use", open=False):
            gr.Markdown("\n".join(f"* {line}" for line in public_lines(pipe.sources)) + f"\n* device: {pipe.device}")
        with gr.Tab("Animate"):
            animate_tab(demo, service, delete_cache[1])
        with gr.Tab("Blendshapes"):
            blendshapes_tab(pipe, service.look)
        with gr.Tab("Live"):  # its own page and WebSocket (blendtalk.live.server), beside the /animate queue
            # The page fits 560 px in a window 1130 px wide or more; narrower, its controls wrap under the face.
            gr.HTML('<iframe id="live-frame" src="/live/" allow="microphone" '
                    'style="width:100%;height:clamp(560px,calc(2820px - 200vw),1050px);border:0"></iframe>')
    return demo


def animate_tab(demo, service: Service, keep_s: float) -> None:
    """The Animate tab's inputs, outputs and events, inside `demo`'s open Blocks; results are kept `keep_s`."""
    import gradio as gr

    from blendtalk.expression.emotions import EMOTIONS, MAX_INTENSITY

    default_size, limits = service.default_size, service.limits

    def generate(audio=None, text="", transcript="", emotion="happy", intensity=1.0, mix_with=NO_MIX, mix_ratio=0.5,
                 timeline="", blinks=True, size=str(default_size), head_motion=True, progress=gr.Progress(),
                 request: gr.Request = None):
        # API callers may leave out every input but the speech: audio's None default and each
        # component's initial value (text boxes start at "") are what Gradio offers them as defaults.
        """Speech (an audio file, or text to speak) + an emotion -> (mp4 with sound, animated mesh as
        HTML, blendshape weight curves, downloads, status). Audio at most 60 s; emotion one of
        neutral, happy, sad, angry, surprised, fearful, disgusted, contempt; intensity 0..1.5;
        mix_with "" or a second emotion, mix_ratio 0..1; timeline e.g. 'neutral@0 happy@1.5 sad@4.0:0.7';
        head_motion (default true): nods, turns and gaze shifts driven by the speech, and the emotion's
        own head posture and gaze (sad bows and looks down, fear looks away)."""
        client = serving.client_key(getattr(getattr(request, "client", None), "host", None),
                                    serving.forwarded_for(getattr(request, "headers", None)), service.trusted)
        from gradio.context import LocalContext  # the queued event this call serves (Gradio sets it per call)

        event_id = LocalContext.event_id.get(None)
        alive = (lambda: serving.event_alive(demo, event_id)) if event_id else None
        try:
            yield from service.admitted_steps(client, audio, text, transcript, emotion, intensity, mix_with, mix_ratio,
                                              timeline, blinks, size, head_motion, progress=progress, alive=alive)
        except gr.Error as err:  # said in a toast for 10 s; `show_failure` keeps it in the status line
            failures[getattr(request, "session_hash", None)] = err.message
            while len(failures) > MAX_FAILURES:
                failures.pop(next(iter(failures)))
            raise

    def show_failure(request: gr.Request = None):
        """After a failed Generate: the reason stays in the status line (not only in a passing toast),
        and the video of the last good run stays where it was (an output of this event, left as is)."""
        reason = failures.pop(getattr(request, "session_hash", None), None) or "the request failed."
        return gr.update(), f"**Not animated:** {public_text(reason)}"

    # Gradio passes the request only to a parameter whose type hint resolves to gr.Request; this module's
    # hints are strings (postponed annotations) naming `gr`, imported in here, so Gradio could not resolve
    # it and every client was "unknown": one shared rate limit and one running request for the whole server.
    generate.__annotations__["request"] = gr.Request
    show_failure.__annotations__["request"] = gr.Request
    failures: dict[str | None, str] = {}  # browser session -> why its last Generate failed (the newest MAX_FAILURES)

    def estimate(audio, text, size):
        return service.estimate(demo, audio, text, size)

    # The outputs are made first and placed below, so that the examples can sit right under Generate,
    # where a first visitor looks, and still name them.
    video = gr.Video(label="Talking face (mp4 with sound)", elem_id="video", autoplay=False, render=False)
    status = gr.Markdown(elem_id="status", render=False)
    mesh = gr.HTML(label="Interactive 3D face (drag to turn, ▶ to play)", elem_id="mesh",
                   js_on_load=None, min_height=100, render=False)
    rig3d = gr.Model3D(label="The rig driven by its 52 ARKit blendshape curves (glTF morph targets; loops)",
                       elem_id="rig3d", clear_color=(0.17, 0.18, 0.21, 1.0), camera_position=(90, 90, 0.6),
                       height=420, render=False)
    curves = gr.Plot(label="Blendshape weights over time", elem_id="curves", render=False)
    files = gr.File(label="Downloads: mp4, vertices .npy, OBJ sequence .zip, glTF .glb, ARKit CSV/JSON, FLAME, "
                          "the rig with ARKit morph targets _rig.glb",
                    file_count="multiple", interactive=False, elem_id="downloads", render=False)
    outputs = [video, mesh, curves, files, status]
    with gr.Row():
        with gr.Column(scale=2):
            audio = gr.Audio(sources=["upload", "microphone"], type="filepath",
                             label=f"Speech (upload or record, at most {MAX_AUDIO_SECONDS:g} s)",
                             elem_id="speech")
            text = gr.Textbox("", label=f"…or text to speak (built-in TTS, at most {MAX_TEXT_CHARS} characters)", lines=2,
                              max_length=MAX_TEXT_CHARS,
                              placeholder="Type a sentence; leave empty when you give audio.", elem_id="text")
            transcript = gr.Textbox("", label=f"Transcript (optional, at most {MAX_TRANSCRIPT_CHARS} characters): the words "
                                              "of the audio, for better lip sync",
                                    max_length=MAX_TRANSCRIPT_CHARS, elem_id="transcript")
            with gr.Row():
                emotion = gr.Dropdown(list(EMOTIONS), value="happy", label="Emotion", elem_id="emotion")
                intensity = gr.Slider(0, MAX_INTENSITY, 1.0, step=0.05, label="Intensity", info="1 is the apex; above exaggerates",
                                      elem_id="intensity")
            with gr.Accordion("More: mix, timeline, blinks, head motion, video size", open=False):
                with gr.Row():
                    mix_with = gr.Dropdown([("none", NO_MIX), *[(e, e) for e in EMOTIONS]], value=NO_MIX,
                                           label="Second emotion (optional)")
                    mix_ratio = gr.Slider(0, 1, 0.5, step=0.05, label="Share of the second emotion")
                timeline = gr.Textbox("", label="Emotion timeline (optional; overrides the emotions above)",
                                      placeholder=TIMELINE_HINT, info="NAME@SECONDS[:INTENSITY], e.g. " + TIMELINE_HINT)
                with gr.Row():
                    blinks = gr.Checkbox(True, label="Natural blinks")
                    head_motion = gr.Checkbox(True, label="Head and eye motion", elem_id="head-motion")
                    size = gr.Dropdown([AUTO_SIZE, *map(str, VIDEO_SIZES)], value=str(default_size), label="Video size (px)",
                                       info="auto: the sharpest this server allows for the clip's length",
                                       allow_custom_value=True)  # check_request takes "256" or 256
            button = gr.Button("Generate", variant="primary", elem_id="generate")
            examples([audio, text, transcript, emotion, intensity], outputs, service.run_example)
        with gr.Column(scale=3):
            video.render()
            status.render()
    gr.Markdown("**Interactive 3D face**: drag to turn it, scroll to zoom, ▶ to play")  # gr.HTML draws no label
    for output in (mesh, rig3d, curves, files):
        output.render()
    inputs = [audio, text, transcript, emotion, intensity, mix_with, mix_ratio, timeline, blinks, size, head_motion]
    button.click(estimate, [audio, text, size], status, queue=False, api_visibility="private",
                 show_progress="hidden")  # before the queue: where this request stands
    # gr.Model3D (6.x) starts its viewer for a value set by a plain event, not by a generator's
    # update: a second event shows the rig's GLB from the downloads, leaving /animate's outputs as they were.
    run = button.click(generate, inputs, outputs, api_name="animate", api_visibility="public")
    run.then(rig_view, files, rig3d, api_visibility="private", show_progress="hidden")
    run.failure(show_failure, None, [video, status], api_visibility="private", show_progress="hidden")
    gr.Markdown(f"Results are kept for at least {keep_s / 60:g} minutes, then deleted (sooner only if "
                f"the server's cache is full): download what you want to keep. Limits: "
                f"{limits.max_cost:g} s of speech at 256 px or less, "
                f"{serving.longest_seconds(512, limits.max_cost):.0f} s at 512 px; "
                f"{limits.rate_per_minute or 'any number of'} requests a minute and "
                f"{limits.running_per_client or 'any number'} computed at once per address. "
                f"The ARKit CSV/JSON open in Blender with the [blendtalk add-on]({BLENDER_ROUTE}) (Edit > Preferences > "
                "Add-ons > Install from Disk; its panel is in the 3D view's sidebar); the CSV is in Live Link Face's "
                "layout, which Unreal's Live Link Face importer reads.")


def examples(inputs, outputs, fn):
    """The Animate tab's examples (inside an open Blocks): computed by `fn` on first use, then
    cached. Returns the `gr.Examples`; its audio stays in Gradio's cache for as long as the app runs."""
    import gradio as gr

    # Gradio keeps cached example outputs in a CSV; the 3D view's HTML (a few MB) is one field,
    # above the csv module's default field limit of 128 kB when it is read back.
    csv.field_size_limit(2**31 - 1)
    # Gradio warns that some examples leave inputs empty: they do on purpose (audio or text).
    warnings.filterwarnings("ignore", message="Examples will be cached but not all input components")
    rows = [(EXAMPLES_DIR / "tts_surprised", "surprised", "a TTS voice"),
            (ARCTIC_DIR / "arctic_a0009", "angry", "a recorded voice, CMU ARCTIC"),
            (EXAMPLES_DIR / "tts_sad", "sad", "a TTS voice")]
    shown = gr.Examples(
        [[str(stem.with_suffix(".wav")), "", stem.with_suffix(".txt").read_text().strip(), emotion, 1.0]
         for stem, emotion, _ in rows] + [[None, "What a lovely surprise to see you here!", "", "happy", 1.0]],
        inputs=inputs, outputs=outputs, fn=fn, cache_examples=True, cache_mode="lazy",
        label="Examples: click one (the first run of each computes it, then it is cached)",
        example_labels=[f"{emotion}: {voice}" for _, emotion, voice in rows] + ["happy: typed text, built-in TTS"],
    )
    # Gradio copies each example's audio into its cache at start-up without marking the copy as
    # kept, so the cache sweep deleted it after `--delete-cache AGE` and every example click then
    # failed with "Audio file not found". The copies are marked kept on the examples' own dataset.
    shown.dataset.keep_in_cache.update(value["path"] for sample in shown.non_none_processed_examples.values()
                                       for value in sample if isinstance(value, dict) and isinstance(value.get("path"), str))
    return shown


def blendshapes_tab(pipe, look) -> None:
    """The Blendshapes tab (inside an open Blocks): pose the DFM's learned blendshapes with sliders."""
    import gradio as gr

    from blendtalk.render.viz import mesh_figure

    dfm = pipe.dfm
    bases = {"speech": dfm.speech_blendshapes.detach().float().cpu().numpy(),  # (K_s, V, 3) m per unit weight
             "expression": dfm.expression_blendshapes.detach().float().cpu().numpy()}  # (K_e, V, 3)
    scales = {kind: SLIDER_PEAK_M / np.maximum(np.linalg.norm(b, axis=-1).max(axis=1), 1e-12)
              for kind, b in bases.items()}  # (K,) weight per slider unit
    num_sliders = max(len(b) for b in bases.values())
    template = pipe.rig.vertices.astype(np.float32)

    def pose(kind, *values):
        if kind not in bases:
            raise gr.Error(f"Choose speech or expression blendshapes, got {kind!r}.")
        k = len(bases[kind])
        w = np.clip(np.asarray(values[:k], dtype=np.float32), -1, 1) * scales[kind]  # (K,)
        verts = template + np.tensordot(w, bases[kind], axes=1)  # (V, 3)
        return mesh_figure(verts, pipe.rig.triangles, rig=look, height=520)

    def choose(kind):
        k = len(bases[kind])
        sliders = [gr.Slider(value=0.0, visible=i < k, label=f"{kind[0]}{i}") for i in range(num_sliders)]
        return [pose(kind, *([0.0] * num_sliders)), *sliders]

    gr.Markdown("The DFM's learned blendshapes on the face rig: speech ones move the mouth, expression ones "
                f"the rest. A slider at ±1 moves its blendshape's most-moved vertex by {SLIDER_PEAK_M * 1000:g} mm.")
    with gr.Row():
        with gr.Column(scale=2):
            kind = gr.Radio(list(bases), value="speech", label="Blendshapes")
            reset = gr.Button("Reset")
            sliders = []
            with gr.Column(elem_id="face-sliders"):
                for row in range(0, num_sliders, SLIDERS_PER_ROW):
                    with gr.Row():
                        for i in range(row, min(row + SLIDERS_PER_ROW, num_sliders)):
                            sliders.append(gr.Slider(-1, 1, 0.0, step=0.05, label=f"s{i}", min_width=80,
                                                     visible=i < len(bases["speech"])))
        with gr.Column(scale=3):
            face = gr.Plot(pose("speech", *([0.0] * num_sliders)), label="Face", elem_id="face")
    explore = dict(api_visibility="private", show_progress="hidden", concurrency_id="explore",
                   concurrency_limit=4, trigger_mode="always_last")
    for slider in sliders:
        slider.change(pose, [kind, *sliders], face, **explore)
    kind.change(choose, kind, [face, *sliders], **explore)
    reset.click(choose, kind, [face, *sliders], **explore)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on (GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
                        help="port (GRADIO_SERVER_PORT)")
    parser.add_argument("--size", type=int, choices=VIDEO_SIZES,
                        help="default video size in px; unset: the sharpest that the cost budget allows for each clip")
    parser.add_argument("--device", help="cpu or cuda; unset: cuda when available")
    parser.add_argument("--dfm", help="DFM checkpoint folder or Hub id; unset: BLENDTALK_DFM, then the shipped one")
    parser.add_argument("--speech-model", help="speech checkpoint folder or Hub id; unset: BLENDTALK_SPEECH, then the shipped one")
    parser.add_argument("--threads", type=int, help="torch CPU threads; unset: CPU cores / concurrent requests")
    parser.add_argument("--workdir", default=os.environ.get("BLENDTALK_APP_DIR"),
                        help="the app's work folder (BLENDTALK_APP_DIR); unset: a temporary folder removed at exit")
    parser.add_argument("--delete-cache", type=int, nargs=2, default=DELETE_CACHE, metavar=("EVERY", "AGE"),
                        help="every EVERY s, delete Gradio's cached uploads/results older than AGE s")
    parser.add_argument("--keep-requests", type=float, default=REQUEST_KEEP_S,
                        help="s after which a left-over request folder is swept")
    parser.add_argument("--queue-size", type=int, default=QUEUE_SIZE,
                        help="requests that may wait; more are refused with 'queue full'")
    parser.add_argument("--live-sessions", type=int, default=2, help="live sessions at once (each about 60%% of a core)")
    parser.add_argument("--live-seconds", type=float, default=300.0, help="audio seconds one live session may stream")
    parser.add_argument("--cache-max-mb", type=int, default=CACHE_MAX_MB,
                        help="MB Gradio's cache may hold; over it the oldest files are deleted at each sweep")
    parser.add_argument("--cache-min-age", type=float, default=CACHE_MIN_AGE_S,
                        help="s: the cache cap never deletes a younger file (uploads waiting in the queue)")
    defaults = serving.ServingConfig()
    parser.add_argument("--max-cost", type=float, default=defaults.max_cost,
                        help="budget of a request in s of speech x (size/256)^2; over it a request is refused")
    parser.add_argument("--rate-limit", type=int, default=defaults.rate_per_minute,
                        help="requests a minute per client address; 0: no limit")
    parser.add_argument("--jobs-per-client", type=int, default=defaults.running_per_client,
                        help="requests of one client address computed at once; 0: no limit")
    parser.add_argument("--trusted-proxies", default=os.environ.get(serving.TRUSTED_PROXIES_ENV, ""),
                        help="proxies in front of the app whose X-Forwarded-For names the client for the per-address "
                             "limits: their number (1 behind one reverse proxy) or their addresses/networks, comma-"
                             f"separated (10.0.0.0/8); empty: the header is ignored ({serving.TRUSTED_PROXIES_ENV})")
    args = parser.parse_args(argv)
    serving.limit_malloc_arenas()  # before torch and the server start their threads
    if args.queue_size < 1:
        parser.error(f"--queue-size must be at least 1, got {args.queue_size}")
    try:
        trusted = serving.TrustedProxies.parse(args.trusted_proxies)
    except ValueError as err:
        parser.error(str(err))
    # uvicorn would otherwise rewrite the peer from X-Forwarded-For for connections from 127.0.0.1
    # (its FORWARDED_ALLOW_IPS default), so any local process could choose its key; the app decides.
    os.environ["FORWARDED_ALLOW_IPS"] = ""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    workspace = setup_workspace(args.workdir)  # before gradio is imported
    workspace.keep_s = args.keep_requests
    import torch

    # Each request gets an equal share of the cores: oversubscribed OpenMP threads spin and slow
    # everything down many times over (measured: 2 threads per request on 2 busy cores, 10x slower).
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // CONCURRENCY))
    from blendtalk.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(dfm=args.dfm, speech=args.speech_model, device=args.device)
    size = args.size or AUTO_SIZE
    if spaces is None:  # a ZeroGPU Space has no GPU here, outside a request
        warm_up(pipe, args.size or max(VIDEO_SIZES))
    every, age = args.delete_cache
    limits = serving.ServingConfig(max_cost=args.max_cost, rate_per_minute=args.rate_limit,
                                   running_per_client=args.jobs_per_client, concurrency=CONCURRENCY)
    demo = build_demo(Service(pipe, workspace, limits, default_size=size, trusted=trusted), delete_cache=(every, age))

    idle_sessions: dict[str, float] = {}  # session -> when it was first seen with nothing waiting or running

    def sweep():
        clear_gradio_cache(demo, age)
        serving.prune_sessions(demo, idle_sessions, keep_s=age, now=time.monotonic())
        keep = set().union(*(getattr(block, "keep_in_cache", set()) for block in demo.blocks.values()),
                           serving.queued_files(demo))  # the examples' inputs, and uploads still waiting or running
        serving.cap_folder(Path(os.environ["GRADIO_TEMP_DIR"]), args.cache_max_mb * 2**20, keep=keep,
                           min_age_s=args.cache_min_age)
        serving.release_memory()

    workspace.start_sweeper(every, also=sweep)
    demo.queue(max_size=args.queue_size, default_concurrency_limit=CONCURRENCY)
    from blendtalk.live.server import LiveService, add_routes

    live = LiveService(pipe, max_sessions=args.live_sessions, max_seconds=args.live_seconds)
    from starlette.middleware import Middleware

    from blendtalk.path_mask import PathMask

    # Gradio names files by their absolute paths on the server; clients see neutral names instead.
    masked = [(os.path.abspath(os.environ["GRADIO_TEMP_DIR"]), PUBLIC_CACHE),
              (os.path.abspath(os.environ["GRADIO_EXAMPLES_CACHE"]), PUBLIC_EXAMPLES)]
    demo.launch(app_kwargs={"middleware": [Middleware(PathMask, folders=masked)]},
                server_name=args.host, server_port=args.port, max_file_size=MAX_UPLOAD, ssr_mode=False,
                footer_links=["api", "gradio", "settings"],
                state_session_capacity=STATE_SESSIONS, prevent_thread_lock=True)
    add_routes(demo.app, live)  # the Live tab's page and WebSocket, first in the routing table
    add_file_routes(demo.app)
    t0 = time.perf_counter()
    frozen = serving.freeze_startup()  # the start-up is done: what is alive now stays for the app's life
    logger.info("froze %d start-up objects in %.2f s", frozen, time.perf_counter() - t0)
    demo.block_thread()


if __name__ == "__main__":
    main()
