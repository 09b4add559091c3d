"""Shared fixtures and the test markers: `slow` (deselect with -m "not slow"; CI runs everything)
and `gpu` (skipped here when no CUDA device is present, so tests need no skipif of their own)."""

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    no_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(no_gpu)


@pytest.fixture(autouse=True)
def _grad_mode_restored(request):
    """Global torch state is not a test's to change: a test that leaves grad mode off fails itself,
    instead of a later test failing far from the cause."""
    yield
    if not torch.is_grad_enabled():
        torch.set_grad_enabled(True)
        pytest.fail(f"{request.node.nodeid} left torch grad mode disabled")


@pytest.fixture(scope="session")
def word_lm():
    """pocketsphinx's word LM, with which recognition hears words; the slimmed wheel that travels to
    the GPU host leaves it out (recognition then falls back to allphone: tests/test_phonetics.py)."""
    from pathlib import Path

    from pocketsphinx import get_model_path

    if not (Path(get_model_path()) / "en-us" / "en-us.lm.bin").is_file():
        pytest.skip("this pocketsphinx has no word LM")


@pytest.fixture(scope="session")
def rig():
    """The shipped face rig, loaded once per session (tests must not change it)."""
    from blendtalk.face.rig import load_rig

    return load_rig()


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory, rig):
    """A small synthetic corpus (8 speakers x 1 sentence, 8 subjects x 8 emotions x 1 s), made once
    per session: 8 of each so that the 75/12.5/12.5 split leaves one for validation and one for test.
    Read-only: tests that train write their runs elsewhere."""
    from blendtalk.data.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("synth")
    config = SynthConfig(num_speakers=8, sentences_per_speaker=1, num_subjects=8, takes_per_emotion=1, expression_seconds=1.0)
    generate(root, config, rig)
    return root
