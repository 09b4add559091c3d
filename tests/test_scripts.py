"""The train/ and eval/ scripts answer bad input with one line and exit status 2, before any long
work, and keep what earlier runs wrote (`blendtalk.cli.run_script`, `evaluation.reports.output_file`)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARCTIC = ROOT / "assets" / "audio" / "arctic_a0009.wav"


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


@pytest.mark.parametrize("script, args, words", [
    ("eval/lipsync.py", ["/no/such.wav", "--json", "{tmp}/r.json"], "Audio file not found"),
    ("eval/lipsync.py", [str(ARCTIC), "--json", "{tmp}"], "is a folder; give a file name in it"),
    ("eval/lipsync.py", [str(ARCTIC), "--json", "{tmp}/r.txt"], "give a .json file"),
    ("eval/lipsync.py", [str(ARCTIC), "--checkpoint", "x", "--json", "{tmp}/r.json"], "add --driver faceformer"),
    ("eval/disentangle.py", ["--max-sentences", "0", "--json", "{tmp}/r.json"], "--max-sentences must be at least 1"),
    ("eval/disentangle.py", [], "give --json"),
    ("eval/legibility.py", ["--sheet", "{tmp}", "--json", "{tmp}/r.json"], "is a folder"),
    ("eval/speech_conditions.py", ["--json", "{tmp}"], "is a folder; give a file name in it"),
    ("eval/speech_conditions.py", ["--conditions", "underwater", "--json", "{tmp}/r.json"], "invalid choice: 'underwater'"),
    ("eval/speech_conditions.py", ["--closure-mm", "0", "--json", "{tmp}/r.json"], "--closure-mm must be positive"),
    ("train/train_dfm.py", ["--max-minutes", "0"], "--max-minutes must be positive"),
    ("train/train_dfm.py", ["--resume", "{tmp}", "--lr", "0.5"], "leave out --lr"),
    ("train/train_dfm.py", ["--data", "README.md"], "holds no synthetic corpus"),
    ("train/sweep_dfm.py", ["--lambda-sparse", "-1", "--out", "{tmp}/sweep"], "--lambda-sparse must be >= 0"),
    ("train/train_faceformer.py", ["--threads", "0"], "--threads must be at least 1"),
])
def test_bad_input_gets_one_line(script, args, words, tmp_path):
    out = run(script, *[a.format(tmp=tmp_path) for a in args])
    assert out.returncode == 2 and words in out.stderr and "Traceback" not in out.stderr, out.stderr[-1500:]
    assert list(tmp_path.iterdir()) == []  # nothing was written


def test_an_earlier_sweep_is_kept(tmp_path):
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "sweep.json").write_text("[]")
    out = run("train/sweep_dfm.py", "--out", str(tmp_path / "sweep"))
    assert out.returncode == 2 and "exists; give another --out" in out.stderr
    assert (tmp_path / "sweep" / "sweep.json").read_text() == "[]"


def test_run_script_passes_bugs_through(monkeypatch):
    """Bad input is a ValueError or OSError; anything else is a bug and keeps its traceback."""
    from blendtalk.cli import run_script

    def bad_input():
        raise ValueError("say what to do")

    def bug():
        raise KeyError("fused_mve")

    assert run_script(bad_input) == 2
    with pytest.raises(KeyError):
        run_script(bug)
