"""Speech + emotion -> an animated face: the models loaded once, then `Pipeline.animate`.

    from blendtalk import Pipeline
    pipe = Pipeline.from_pretrained()                     # shipped checkpoints, or BLENDTALK_DFM / BLENDTALK_SPEECH
    anim = pipe.animate("speech.wav", emotion="happy")  # intensity 1.0: the apex
    pipe.save_video(anim, "out.mp4")

Stages (timed in `Animation.meta["timings"]`): the audio front end (load, phones, features), the
speech model (FaceFormer, or the procedural viseme driver when no speech checkpoint is found),
the expression input (an emotion label, a mix of two, a timeline, or a reference sequence, with
blinks), head and eye motion from the speech's prosody (`head_motion`), the DFM (paper eq. 13: speech weights from the speech input, expression weights from the
expression input), and the ARKit/FLAME mappings when they were fitted beside the DFM.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .animation import Animation
from .constants import FPS, SAMPLE_RATE
from .expression.emotions import add_blinks, blinks, max_posture, mix, mix_posture, pause_share, timeline_posture, timeline_weights, yield_to_closure
from .expression.head_motion import HeadMotionConfig, add_posture, head_pivot, rotate_head, speech_head_motion
from .face.rig import FaceRig, load_rig
from .models.checkpoint import cpu_threads, pick_device
from .request import METHODS, AnimationRequest, Expression, check_speech, read_reference
from .speech.phones import BILABIAL_IDS, SILENCE_ID, phones_to_frames

logger = logging.getLogger(__name__)

PROCEDURAL = "visemes"  # as the speech source: the procedural viseme driver instead of a learned model
Progress = Callable[[float, str], None]  # (fraction done in [0, 1], what is happening)


def expression_weights(expr: Expression, frames: int, fps: float = FPS, names: Sequence[str] | None = None) -> np.ndarray:
    """ARKit weights (T, 52) of an `Expression` without a reference file."""
    kw = {} if names is None else {"names": names}
    if expr.timeline:
        w = timeline_weights(expr.timeline, frames, intensity=expr.intensity, fps=fps, **kw)
    else:
        target = (mix(expr.emotion, expr.mix_with, expr.mix_ratio, expr.intensity, **kw) if expr.mix_with
                  else mix(expr.emotion, expr.emotion, 0.0, expr.intensity, **kw))
        w = np.repeat(target[None], frames, axis=0)  # held from the first frame: the speaker is already angry
    if expr.blinks:
        w = add_blinks(w, blinks(frames, seed=expr.seed, fps=fps, **kw), **kw)
    return w.astype(np.float32)


def expression_posture(expr: Expression, frames: int, fps: float = FPS) -> np.ndarray:
    """Head and gaze offsets (T, 5) in degrees of an `Expression` (`emotions.EMOTION_POSTURE`), following
    its emotion, mix or timeline as `expression_weights` does."""
    if expr.timeline:
        return timeline_posture(expr.timeline, frames, intensity=expr.intensity, fps=fps)
    target = mix_posture(expr.emotion, expr.mix_with or expr.emotion, expr.mix_ratio if expr.mix_with else 0.0, expr.intensity)
    return np.repeat(target[None], frames, axis=0)


def load_reference(path: str | Path, rig: FaceRig, frames: int) -> np.ndarray:
    """A reference expression sequence file -> displacements (T, V, 3) on the rig, looped or cut to T."""
    return _loop(read_reference(path, rig), frames)


def _loop(disp: np.ndarray, frames: int) -> np.ndarray:
    """(T', V, 3) -> (T, V, 3): repeated from the start or cut."""
    return disp[np.arange(frames) % len(disp)]


@dataclass
class Pipeline:
    """The loaded models. Build with `from_pretrained`; reuse for many clips.

    dfm: a DeformationFusionModule (or None: only "interpolation"/"speech_only"). speech_model: a
    FaceFormer (or None: the procedural viseme driver). arkit / flame: mappings from the DFM's
    weights (or None). sources: one line per checkpoint saying where it came from.
    """

    rig: FaceRig
    dfm: torch.nn.Module | None = None
    speech_model: torch.nn.Module | None = None
    arkit: object | None = None
    flame: object | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    sources: list[str] = field(default_factory=list)
    # Head and eye motion of `animate(head_motion=True)`; its largest angles also set the video's framing.
    head_motion_config: HeadMotionConfig = field(default_factory=HeadMotionConfig)
    _aligner: object | None = None
    _renderers: dict = field(default_factory=dict)
    _renderer_lock: threading.Lock = field(default_factory=threading.Lock)  # one build per size, even from two threads
    _dressing: object | None = None  # built once: the app asks for it twice a request (70 ms each)
    _stream_encoder: tuple | None = None  # (encoder or None,) once looked up: every live session shares it

    @classmethod
    def from_pretrained(cls, dfm: str | None = None, speech: str | None = None, device: str | None = None,
                        rig: FaceRig | None = None, phone_workers: int | None = None, aligner=None) -> "Pipeline":
        """Load the checkpoints: `dfm`/`speech` a local folder or Hub id ("org/name[@rev]") (speech may
        also be "visemes": the procedural driver, which closes the lips on /p b m/ by rule), else the
        BLENDTALK_DFM / BLENDTALK_SPEECH environment variables, else the shipped assets/ ones.
        Hub failures fall back to the shipped checkpoints (logged, and listed in `sources`).

        phone_workers: processes that recognise the phones of one clip in pieces at once
        (blendtalk.speech.phonetics.PhoneAligner); None: `default_phone_workers` (a core each, one left to feed a GPU).
        aligner: a PhoneAligner to use instead of a new one (e.g. one already recognising the clip,
        `PhoneAligner.prefetch`); phone_workers is then its own."""
        from .hub import CheckpointNotFoundError, resolve_checkpoint
        from .models.dfm import load_dfm
        from .models.faceformer import load_speech_model
        from .models.mapping import load_mapping
        from .speech.phonetics import PhoneAligner, default_phone_workers

        device = pick_device(device)
        if aligner is None:
            aligner = PhoneAligner(default_phone_workers(busy_cores=int(device.type == "cuda")) if phone_workers is None else phone_workers)
        rig = rig or load_rig()
        pipe = cls(rig=rig, device=device, _aligner=aligner)
        found = resolve_checkpoint("dfm", dfm)
        pipe.dfm = load_dfm(found.path, rig, device)
        pipe.sources.append(found.message)
        for target in ("arkit", "flame"):
            if (Path(found.path) / f"mapping_{target}").is_dir():
                try:
                    setattr(pipe, target, load_mapping(found.path, target, device=device))
                except (ValueError, FileNotFoundError) as err:
                    pipe.sources.append(f"{target} mapping not used: {err}")
        if speech == PROCEDURAL:
            pipe.sources.append("speech: the procedural viseme driver (asked for)")
            return pipe._log_sources()
        try:
            found = resolve_checkpoint("speech", speech)
            pipe.speech_model = load_speech_model(found.path, device)
            pipe.sources.append(found.message)
        except CheckpointNotFoundError as err:
            if speech is not None:
                raise
            pipe.sources.append(f"speech: no checkpoint ({err}); using the procedural viseme driver")
        return pipe._log_sources()

    def _log_sources(self) -> "Pipeline":
        for line in self.sources:
            logger.info(line)
        return self

    # ---- stages ----
    def speech_input(self, audio=None, text: str | None = None, transcript: str | None = None):
        """Audio path/array (16 kHz) or text -> SpeechFeatures (audio, phones, encoder features),
        checked as a request's speech is (`check_speech`)."""
        return self._features(*check_speech(audio, text, transcript))

    def _features(self, audio: np.ndarray | None, text: str | None, transcript: str | None):
        """Checked speech (`check_speech`) -> SpeechFeatures."""
        from .speech.features import speech_features, text_features
        from .speech.phonetics import PhoneAligner

        if text is not None:
            return text_features(text)
        if self._aligner is None:
            self._aligner = PhoneAligner()
        return speech_features(audio, transcript, self._aligner)

    @property
    def phone_workers(self) -> int:
        """Processes that recognise phones in pieces (0: in this process)."""
        return self._aligner.workers if self._aligner is not None else 0

    def close(self) -> None:
        """Stop the phone recognition processes, if any (they restart when needed)."""
        if self._aligner is not None:
            self._aligner.close()

    def speech_deformation(self, speech) -> tuple[np.ndarray, str]:
        """SpeechFeatures -> speech displacements d_s (T, V, 3) in metres, and the driver's name."""
        if self.speech_model is not None:
            from .speech.features import animate_speech

            return animate_speech(self.speech_model, speech, rig=self.rig), "faceformer"
        from .speech.visemes import VisemeDriver

        _, d = VisemeDriver(self.rig)(speech.phones, speech.num_frames)
        return d, "visemes"

    def expression_deformation(self, expr: Expression, frames: int) -> np.ndarray:
        """Expression displacements d_e (T, V, 3) in metres."""
        if expr.reference is not None:
            return load_reference(expr.reference, self.rig, frames)
        return self.rig.displacement(expression_weights(expr, frames, names=self.rig.blendshape_names)).astype(np.float32)

    def closure_release(self, expr: Expression, d_s: np.ndarray, pause: np.ndarray | None = None) -> np.ndarray:
        """The emotion's unit weights (T, K) that the speech's closures take back: its lip-parting units
        where d_s (T, V, 3) closes the lips, except deep in a pause (`yield_to_closure`; pause (T,) from
        `pause_share`). Subtracted after fusion, not before: the DFM reads a closure inside the
        expression input as articulation leak and would open it again."""
        names = self.rig.blendshape_names
        if expr.reference is not None:  # a recorded sequence carries its own mouth
            return np.zeros((len(d_s), len(names)), dtype=np.float32)
        w = expression_weights(expr, len(d_s), names=names)
        return w - yield_to_closure(w, self.rig.lip_gap(self.rig.vertices + d_s), names, pause)

    @torch.no_grad()
    def fuse(self, d_s: np.ndarray, d_e: np.ndarray, method: str = "ours",
             clean_expression: bool = False) -> tuple[np.ndarray, dict]:
        """(T, V, 3) speech and expression displacements -> fused (T, V, 3) and the weights used.

        clean_expression: d_e was made from action units (an emotion label), so none of it is
        articulation: "ours" keeps it whole instead of taking out the part the expression encoder
        reads on the speech bases (that removal is for recorded expressions, whose mouths leak speech)."""
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        if method == "speech_only":
            return d_s, {}
        if method == "interpolation" or self.dfm is None:
            return d_s + d_e, {}
        # Expression inputs repeat (a held emotion is the same frame until a blink or a change):
        # encode each distinct frame once, which is exact and several times cheaper. Frames are
        # matched by their bytes (np.unique(axis=0) sorts rows and costs as much as the encoder).
        rows = np.ascontiguousarray(d_e, dtype=np.float32).reshape(len(d_e), -1)
        ids: dict[bytes, int] = {}
        inverse = np.array([ids.setdefault(row.tobytes(), len(ids)) for row in rows], dtype=np.int64)
        unique = rows[np.unique(inverse, return_index=True)[1]]  # (U, V*3), in order of first appearance
        ds = torch.from_numpy(np.ascontiguousarray(d_s)).to(self.device)
        de = torch.from_numpy(unique.reshape(-1, *d_e.shape[1:])).to(self.device)
        index = torch.from_numpy(inverse).to(self.device)
        w_speech, cross_s = self.dfm.split(self.dfm.encode_speech(ds))  # (T, K_s), (T, K_e)
        cross_e, w_expr = self.dfm.split(self.dfm.encode_expression(de))  # (U, K_s), (U, K_e)
        w_expr = w_expr[index]
        if method == "eq13":
            fused = self.dfm.fuse_weights(w_speech, w_expr)
        else:  # an input's own content outside the learned bases (fine brow and lid motion) is kept, not redrawn
            own_e = de if clean_expression else de - self.dfm.decode_speech(cross_e)  # (U, V, 3)
            fused = ds - self.dfm.decode_expression(cross_s) + own_e[index]
        w = self.dfm.join(w_speech, w_expr)
        out = {"speech_weights": w_speech.cpu().numpy(), "expression_weights": w_expr.cpu().numpy()}
        if self.arkit is not None:
            out["arkit_weights"] = np.asarray(self.arkit.arkit_weights(w).cpu().numpy(), dtype=np.float32)
        if self.flame is not None:
            out["flame_params"] = {k: v.cpu().numpy() for k, v in self.flame.flame_params(w).items()}
        return fused.cpu().numpy(), out

    # ---- the whole thing ----
    def animate(
        self, audio=None, *, text: str | None = None, transcript: str | None = None, emotion: str = "neutral",
        intensity: float = 1.0, mix_with: str | None = None, mix_ratio: float = 0.5, timeline: str | None = None,
        reference: str | Path | None = None, blinks: bool = True, method: str = "ours", head_motion: bool = True,
        seed: int = 0, progress: Progress | None = None,
    ) -> Animation:
        """Speech (a path, a 16 kHz float32 array, or `text` to speak) + an expression -> Animation.

        head_motion: nods, turns, tilts and gaze shifts driven by the speech (`Animation.head_rotation`
        and `.gaze`; None when off). seed: in [0, 2**32 - 1], picks the blinks and the head and eye
        motion (the same seed gives the same animation). Validates everything before the slow work
        (`AnimationRequest.create`). Raises ValueError (AudioError for audio) with a message a person can act on.
        """
        request = AnimationRequest.create(
            audio, text=text, transcript=transcript, emotion=emotion, intensity=intensity, mix_with=mix_with,
            mix_ratio=mix_ratio, timeline=timeline, reference=reference, blinks=blinks, method=method,
            head_motion=head_motion, seed=seed, rig=self.rig)
        return self.run(request, progress)

    def run(self, request: AnimationRequest, progress: Progress | None = None) -> Animation:
        """A validated request -> Animation (thread-safe: concurrent calls share the loaded models)."""
        expr, method, head_motion, seed = request.expression, request.method, request.head_motion, request.seed
        ref = request.reference  # (T', V, 3) or None
        report = progress or (lambda fraction, what: None)
        timings = {}

        def stage(name, fraction, fn, *args):
            report(fraction, name)
            t0 = time.perf_counter()
            out = fn(*args)
            timings[name] = time.perf_counter() - t0
            return out

        speech = stage("audio front end", 0.0, self._features, request.audio, request.text, request.transcript)
        frames = speech.num_frames
        d_s, driver = stage("speech model", 0.3, self.speech_deformation, speech)
        d_e = stage("expression", 0.6, lambda: _loop(ref, frames) if ref is not None else self.expression_deformation(expr, frames))
        fused, weights = stage("dfm", 0.7, self.fuse, d_s, d_e, method, ref is None)
        if ref is None and method == "ours" and "arkit_weights" in weights:  # a label: its own units, not redrawn
            units = expression_weights(expr, frames, names=self.rig.blendshape_names)  # (T, 52)
            weights["arkit_weights"] = self.arkit.with_expression_units(weights["speech_weights"], units)
        if method != "speech_only":  # the lips close at /p b m/ whatever the emotion; deep in a pause its mouth returns
            ids = phones_to_frames(speech.phones, frames)  # (T,)
            pause = pause_share(ids == SILENCE_ID, np.isin(ids, BILABIAL_IDS))
            released = self.closure_release(expr, d_s, pause)  # (T, 52)
            fused = fused - self.rig.displacement(released)
            if "arkit_weights" in weights:  # the mapping's units are the rig's: an engine's lips close too
                weights["arkit_weights"] = np.clip(weights["arkit_weights"] - released, 0.0, 1.0)
        head, gaze = None, None
        if head_motion:
            def motion():  # the speech's nods and glances, with the emotion's posture (none for a reference file)
                head, gaze = speech_head_motion(speech.audio, frames, seed, self.head_motion_config)
                if ref is not None:
                    return head, gaze
                return add_posture(head, gaze, expression_posture(expr, frames), self.head_motion_config)
            head, gaze = stage("head motion", 0.95, motion)
        report(1.0, "done")
        arkit = weights.get("arkit_weights")
        return Animation(
            vertices=self.rig.vertices[None].astype(np.float32) + fused, triangles=self.rig.triangles,
            audio=speech.audio, fps=FPS, sample_rate=SAMPLE_RATE,
            speech_weights=weights.get("speech_weights"), expression_weights=weights.get("expression_weights"),
            arkit_weights=arkit, arkit_names=tuple(self.rig.blendshape_names) if arkit is not None else (),
            head_rotation=head, gaze=gaze, flame_params=weights.get("flame_params"),
            meta={"expression": expr.describe(), "method": method if self.dfm is not None or method not in ("ours", "eq13") else "interpolation",
                  "speech_driver": driver, "phones": speech.phone_source, "sources": list(self.sources),
                  "timings": timings, "frames": frames, "head_motion": head_motion, "seed": seed},
        )

    # ---- live ----
    def stream_encoder(self):
        """The speech model's encoder distilled for live mode's windows (`models.stream_encoder`), or None
        where none ships for this speech model (sessions then stream the model's own encoder)."""
        if self._stream_encoder is None:
            from .models.stream_encoder import load_stream_encoder

            self._stream_encoder = (load_stream_encoder(self.speech_model) if self.speech_model is not None else None,)
        return self._stream_encoder[0]

    def live(self, emotion: str = "neutral", intensity: float = 1.0, mix_with: str | None = None,
             mix_ratio: float = 0.5, config=None):
        """A `blendtalk.live.LiveSession`: audio chunks in, frames out as they are ready (docs/live.md)."""
        from .live.session import live_session

        return live_session(self, emotion, intensity, mix_with, mix_ratio, config)

    # ---- output ----
    def dressing(self):
        """The rig's `FaceDressing` for exports (teeth, tongue, lashes, eyes, and the brows as vertex
        paint, where the video draws them per pixel); None for a rig without one."""
        from .face.dressing import FaceDressing
        from .render.renderer import RenderConfig, dressing_config

        if self._dressing is None and getattr(self.rig, "dressing", None):
            self._dressing = FaceDressing.for_rig(self.rig, dressing_config(RenderConfig()))  # immutable: shared by threads
        return self._dressing

    def renderer(self, size: int = 512):
        """A Renderer for the rig at `size` px, built once per size, framed so that the head stays
        inside the frame at the largest angles `head_motion_config` and the emotions' postures allow."""
        from .render.renderer import RenderConfig, Renderer

        if not (isinstance(size, int) and 64 <= size <= 2048):
            raise ValueError(f"video size must be an integer number of pixels in [64, 2048], got {size!r}")
        with self._renderer_lock:
            if size not in self._renderers:
                base = RenderConfig(size=size)
                angles = self.head_motion_config.max_angles + np.radians(max_posture()[:3])  # speech's motion + the emotion's posture
                margin = framing_margin(self.rig.vertices, head_pivot(self.rig.vertices), angles, base)
                self._renderers[size] = Renderer.for_rig(self.rig, replace(base, margin=margin), device=self.device)
            return self._renderers[size]

    def prepare_renderer(self, size: int = 512) -> threading.Thread:
        """Build `renderer(size)` on a background thread now and draw one frame with it (on a CPU,
        that first frame compiles llvmpipe's shaders), for a caller with other work before the
        render: the CLI starts it once the models are loaded, and it runs on the core that the
        speech model's single-threaded loop leaves free. `renderer(size)` waits for it; an error
        here is left for that call to raise again. Returns the thread."""

        def build() -> None:
            try:
                with cpu_threads(1):  # background work: the other core runs the caller's
                    self.renderer(size)(self.rig.vertices)
            except Exception as err:  # the caller's renderer(size) builds it again and raises
                logger.debug("preparing the %d px renderer failed: %s", size, err)

        thread = threading.Thread(target=build, name="prepare-renderer", daemon=True)
        thread.start()
        return thread

    @property
    def render_batch(self) -> int:
        """Frames per renderer call: 60 on a CPU, 256 on a GPU (bigger launches; see render_frames)."""
        return 60 if self.device.type == "cpu" else 256

    def render_frames(self, animation: Animation, size: int = 512, batch: int | None = None,
                      progress: Progress | None = None, pixel_format: str = "rgb24"):
        """Yield uint8 frame batches (B, size, size, 3) of the animation (for write_video), dressed;
        the eyes follow `animation.gaze` (T, 2) rad [yaw, pitch] where the animation has one.
        pixel_format "yuv420p": batches (B, 3 size/2, size) in the encoder's format (`render.yuv`).
        batch: frames per call of the renderer; None: 60 on a CPU, 256 on a GPU, where bigger
        launches drew a 10 s clip in 0.26 s instead of 0.41 (H100, 512 px)."""
        renderer = self.renderer(size)
        batch = batch or self.render_batch
        total = animation.num_frames
        gaze = animation.gaze  # (T, 2) or None: the eyes look ahead
        for start in range(0, total, batch):
            if progress:
                progress(start / total, "render")
            chunk = slice(start, start + batch)
            yield renderer(animation.vertices[chunk], None if gaze is None else gaze[chunk],
                           None if animation.head_rotation is None else animation.head_rotation[chunk], pixel_format)

    def save_video(self, animation: Animation, path: str | Path, size: int = 512, progress: Progress | None = None,
                   video=None) -> Path:
        """Render and encode to an mp4 (H.264 + AAC, same length as the audio); times both stages and
        records the encoder in `animation.meta["encoder"]`. On a GPU the frames are converted to the
        encoder's yuv420p there (ffmpeg's own conversion takes a CPU core longer than the render) and
        NVENC encodes them as they are rendered, through PyNvVideoCodec where it is installed
        (`render.nvenc`), else x264. Should NVENC fail midway, the clip is rendered again for x264.
        video: a `render.video.VideoConfig`; None: x264 on a CPU, encoder "auto" on a GPU."""
        from .render.nvenc import NvencError
        from .render.video import VideoConfig, write_video

        t0 = time.perf_counter()
        t_render = [0.0]

        gpu = self.device.type == "cuda" and size % 2 == 0
        pixel_format = "yuv420p" if gpu else "rgb24"
        config = video or (VideoConfig(encoder="auto") if gpu else VideoConfig())

        def timed():
            it = self.render_frames(animation, size, progress=progress, pixel_format=pixel_format)
            while True:
                t = time.perf_counter()
                try:
                    block = next(it)
                except StopIteration:
                    return
                t_render[0] += time.perf_counter() - t
                yield block

        used: dict = {}
        try:
            out = write_video(path, timed(), animation.fps, animation.audio, animation.sample_rate, config,
                              pixel_format=pixel_format, report=used)
        except NvencError as err:
            logger.warning("%s; encoding %s again with x264", err, Path(path).name)
            config = replace(config, encoder="libx264")
            out = write_video(path, timed(), animation.fps, animation.audio, animation.sample_rate, config,
                              pixel_format=pixel_format, report=used)
        total = time.perf_counter() - t0
        animation.meta.setdefault("timings", {}).update({"render": t_render[0], "encode": total - t_render[0]})
        animation.meta["encoder"] = used.get("encoder")
        return out


def framing_margin(template: np.ndarray, pivot: np.ndarray, max_angles: np.ndarray, config) -> float:
    """The `RenderConfig.margin` at which the template (V, 3) turned by up to `max_angles` (3,)
    radians about `pivot` (3,) keeps at least half of `config.margin` clear on every side.

    The camera is the renderer's (framed on the template's box, `render.Renderer`); the 27 corner,
    edge and face poses of the box of angles are checked, and the margin found by bisection.
    """
    from .render.camera import rotation

    tmpl = np.asarray(template, dtype=np.float64)
    signs = np.stack(np.meshgrid(*[[-1.0, 0.0, 1.0]] * 3, indexing="ij"), -1).reshape(-1, 3)  # (27, 3)
    posed = rotate_head(np.broadcast_to(tmpl, (len(signs), *tmpl.shape)), signs * max_angles, pivot)  # (27, V, 3)
    rot = rotation(config.yaw_deg, config.pitch_deg).numpy()
    centre = (tmpl.min(0) + tmpl.max(0)) / 2
    local, moved = (tmpl - centre) @ rot.T, (posed - centre) @ rot.T  # camera frame, +z toward the camera
    reach = np.abs(local[:, :2]).max(1)
    keep = 1 - config.margin  # share of the half-frame the moving head may fill

    def fits(margin: float) -> bool:
        fill = 1 - 2 * margin
        if config.fov_deg > 0:
            tan = math.tan(math.radians(config.fov_deg) / 2)
            distance = float((reach / (tan * fill) + local[:, 2]).max())
            screen = np.abs(moved[..., :2]).max(-1) / (tan * (distance - moved[..., 2]))
        else:
            screen = np.abs(moved[..., :2]).max(-1) * fill / float(reach.max())
        return float(screen.max()) <= keep

    lo, hi = config.margin, 0.45
    if fits(lo):
        return lo
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi
