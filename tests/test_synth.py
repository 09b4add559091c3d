"""The synthetic corpora: real layouts, exact truth, lips closed at /p b m/, determinism."""

import json
import subprocess
import sys

import numpy as np
import pytest

from blendtalk.constants import FPS
from blendtalk.data.datasets import ExpressionDataset, SpeechDataset
from blendtalk.data.florence import read_florence
from blendtalk.data.synth import SynthConfig, generate
from blendtalk.data.vocaset import read_vocaset
from blendtalk.evaluation.fusion import synthetic_split
from blendtalk.speech.phones import BILABIALS

SMALL = SynthConfig(num_speakers=3, sentences_per_speaker=2, num_subjects=3, takes_per_emotion=1, expression_seconds=1.5)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, rig):
    return generate(tmp_path_factory.mktemp("synth"), SMALL, rig)


def test_layouts_read_back(corpus, rig):
    speech = read_vocaset(corpus / "speech")
    expr = read_florence(corpus / "expression")
    assert len(speech.sequences) == 6 and len(expr.sequences) == 3 * 8
    seq = speech.sequences[0]
    assert seq.vertices.shape[1:] == (rig.num_vertices, 3) and seq.fps == FPS
    audio, sr = seq.load_audio()
    assert sr == 16_000
    assert abs(len(audio) / sr - len(seq.vertices) / FPS) < 1.5 / FPS  # audio and motion the same length
    meta = json.loads((corpus / "corpus.json").read_text())
    assert len({s["voice"] for s in meta["speakers"]}) == 3


def test_vertices_are_rig_of_truth(corpus, rig):
    """Each frame is exactly the rig evaluated at pure part + leak; the truth files are complete."""
    for seq in read_vocaset(corpus / "speech").sequences[:2]:
        with np.load(corpus / "truth" / "speech" / f"{seq.subject}_{seq.sentence}.npz") as z:
            np.testing.assert_allclose(seq.vertices, rig(z["speech"] + z["leak"]), atol=1e-6)
            assert len(z["phone_symbols"]) == len(z["phone_times"]) > 5
            assert 0 < np.abs(z["leak"]).max() < 0.35  # a small leak, present
    seq = read_florence(corpus / "expression").sequences[0]
    with np.load(corpus / "truth" / "expression" / f"{seq.subject}_{seq.expression}.npz") as z:
        np.testing.assert_allclose(seq.load_vertices() if hasattr(seq, "load_vertices") else np.asarray(seq.vertices),
                                   rig(z["expression"] + z["leak"]), atol=1e-6)


def test_lips_close_at_bilabials_and_emotions_reach_apex(corpus, rig):
    bilabial_gaps = []
    for path in sorted((corpus / "truth" / "speech").glob("*.npz")):
        with np.load(path) as z:
            gap = rig.lip_gap(rig(z["speech"]))
            centres = (np.arange(len(gap)) + 0.5) / FPS
            for sym, (a, b) in zip(z["phone_symbols"], z["phone_times"]):
                if sym in BILABIALS:
                    bilabial_gaps += list(gap[(centres >= a) & (centres < b)])
    assert len(bilabial_gaps) > 5 and max(bilabial_gaps) < 1e-3  # metres
    with np.load(corpus / "truth" / "expression" / "SynthSub00_happy.npz") as z:
        smile = z["expression"][:, rig.index("mouthSmileLeft")]
    assert smile[0] < 0.2 * smile.max() and smile.max() > 0.3  # rises from near neutral to an apex


@pytest.mark.slow
def test_deterministic(tmp_path):
    """Same seed, same corpus. Fresh processes: eSpeak NG keeps a little state between utterances
    within one process (a sample or two of duration), so a corpus is made in one run of its own."""
    args = ["--speakers", "1", "--sentences", "1", "--subjects", "1", "--takes", "1"]
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-m", "blendtalk.data.synth", "--out", str(tmp_path / name), *args],
                       check=True, capture_output=True)
    for part in ("speech/SynthSpk00_sentence01", "expression/SynthSub00_sad"):
        a, b = (np.load(tmp_path / n / "truth" / f"{part}.npz") for n in ("a", "b"))
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])
    assert (tmp_path / "a/speech/data_verts.npy").read_bytes() == (tmp_path / "b/speech/data_verts.npy").read_bytes()


def test_datasets_split_by_speaker(corpus):
    speech = read_vocaset(corpus / "speech").sequences
    split = synthetic_split([s.subject for s in speech])
    train = SpeechDataset(speech, split, "train", window=1, with_audio=False)
    test = SpeechDataset(speech, split, "test", window=1, with_audio=False)
    assert not set(split.train) & set(split.test) and len(test) > 0
    assert train.displacements(np.arange(4)).shape[-2:] == (4278, 3)
    expr = read_florence(corpus / "expression").sequences
    expr_split = synthetic_split([s.subject for s in expr])
    e = ExpressionDataset(expr, expr_split, "train")
    assert len(e) == len(expr_split.train) * 8 * 45  # training subjects x 8 emotions x 1.5 s at 30 fps
