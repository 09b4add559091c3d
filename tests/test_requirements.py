"""The run-time install (requirements.txt) runs the pipeline; test and eval tools stay in requirements-dev.txt."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from blendtalk.models.audio_encoders import AudioEncoderConfig, build_audio_encoder

ROOT = Path(__file__).resolve().parents[1]
DEV_ONLY = ("librosa", "transformers", "matplotlib", "trimesh", "pytest", "hypothesis", "atheris")  # not run-time


def requirement_names(path: Path) -> dict[str, str]:
    """{name: line} of a requirements file, without comments, options and -r lines."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            out[re.split(r"[=<>!~;\[ ]", line)[0].lower()] = line
    return out


def test_runtime_requirements_are_pinned_and_lean():
    runtime = requirement_names(ROOT / "requirements.txt")
    assert not set(DEV_ONLY) & set(runtime)
    assert all("==" in line for line in runtime.values()), runtime  # pinned: versions checked for cp311 and cp312 wheels
    dev = (ROOT / "requirements-dev.txt").read_text()
    assert "-r requirements.txt" in dev and all(name in dev for name in DEV_ONLY)
    assert 'atheris==3.0.0; sys_platform == "linux"' in dev  # no wheel elsewhere: one failed line aborts `pip install -r`


@pytest.mark.slow  # a new Python process loads the whole pipeline
def test_pipeline_runs_without_the_dev_packages():
    """Animate the ARCTIC clip (recognised phones, log-mel, speech model, DFM, head motion) with every dev-only
    package unimportable, as after `pip install -r requirements.txt`."""
    code = (
        "import sys\n"
        f"for m in {DEV_ONLY!r}: sys.modules[m] = None  # any import of them now fails\n"
        "import blendtalk.cli\n"
        "from blendtalk import Pipeline\n"
        "anim = Pipeline.from_pretrained(device='cpu').animate('assets/audio/arctic_a0009.wav', emotion='happy')\n"
        "assert anim.vertices.shape[0] > 80\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]


def test_wav2vec2_without_transformers_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"pip install transformers.*phonetic"):
        build_audio_encoder(AudioEncoderConfig(kind="wav2vec2"), 8)
