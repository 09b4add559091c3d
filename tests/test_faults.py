"""Faults: a slow Hub, a training run and a CLI run killed mid-way, a read-only or full output disk.

The Hub that is down, returns 404 or serves corrupt files is tested in test_hub.py; here it is a
server that accepts and then does not answer (the download must give up within BLENDTALK_HUB_TIMEOUT
and fall back to the shipped checkpoint, saying so). Kills are real: SIGKILL / SIGTERM to a
subprocess at a moment chosen by watching its files. The full disk is a tiny tmpfs (needs root and
mount; skipped otherwise).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from blendtalk.cli import main as cli_main
from blendtalk.constants import ASSETS_DIR
from blendtalk.hub import HUB_TIMEOUT_S, HubTimeoutError, download_checkpoint, hub_timeout, resolve_checkpoint
from blendtalk.models.dfm import DeformationFusionModule
from blendtalk.face.rig import load_rig
from blendtalk.training.dfm import load_train_config, train_dfm
from test_hub import FakeHub, hf_env, shipped, tiny_dfm  # noqa: F401  (fixtures: HF_HOME in tmp, a shipped DFM)

ROOT = Path(__file__).resolve().parents[1]
WAV = ASSETS_DIR / "audio" / "arctic_a0009.wav"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
TIMEOUT_S = 1.5  # s: the test Hub timeout
SLOW_S = 30.0  # s the slow Hub would take to answer: far beyond the timeout


# ---------------------------------------------------------------------------------------------
# A slow Hub


class SlowHub(FakeHub):
    """FakeHub whose answers to paths containing `slow` (None: none) come only after SLOW_S seconds
    (or when closed)."""

    def __init__(self, slow: str | None):
        self.slow, self.closing = slow, threading.Event()
        super().__init__()

    def handle(self, req, body: bool):
        if self.slow is not None and self.slow in req.path:
            self.closing.wait(SLOW_S)
        super().handle(req, body)

    def close(self):
        """Answer the waiting requests and let the abandoned downloads finish before closing: left
        running, huggingface_hub's retries would reset its shared HTTP client under later tests."""
        self.closing.set()
        for thread in threading.enumerate():
            if thread.name.startswith("blendtalk-hub"):
                thread.join(20)
        super().close()


@pytest.fixture
def slow_hub(hf_env, monkeypatch):  # noqa: F811
    hubs = []

    def start(slow: str | None) -> SlowHub:
        hub = SlowHub(slow)
        hubs.append(hub)
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        return hub

    yield start
    for hub in hubs:
        hub.close()


@pytest.mark.parametrize("slow", ["/api/models/", "/resolve/"], ids=["metadata", "file"])
def test_slow_hub_times_out_and_falls_back(slow_hub, shipped, tmp_path, monkeypatch, caplog, slow):  # noqa: F811
    hub = slow_hub(slow)
    tiny_dfm(tmp_path / "src")
    hub.add("org/dfm", tmp_path / "src")
    monkeypatch.setenv("BLENDTALK_HUB_TIMEOUT", str(TIMEOUT_S))
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="blendtalk.hub"):
        got = resolve_checkpoint("dfm", "org/dfm", shipped=shipped)
    took = time.monotonic() - t0
    assert took < TIMEOUT_S + 3, f"the Hub timeout did not hold: {took:.1f} s"
    assert (got.source, got.fell_back, got.path) == ("shipped", True, shipped)
    assert f"within {TIMEOUT_S:g} s" in got.message and "BLENDTALK_HUB_TIMEOUT" in got.message
    assert [r.getMessage() for r in caplog.records if r.name == "blendtalk.hub"] == [got.message]  # said once
    with pytest.raises(HubTimeoutError):
        download_checkpoint("org/dfm", "dfm", timeout=0.5)


def test_the_same_hub_answering_in_time_is_used(slow_hub, shipped, tmp_path, monkeypatch):  # noqa: F811
    hub = slow_hub(None)
    tiny_dfm(tmp_path / "src", seed=2)
    hub.add("org/dfm", tmp_path / "src")
    monkeypatch.setenv("BLENDTALK_HUB_TIMEOUT", str(TIMEOUT_S * 4))
    got = resolve_checkpoint("dfm", "org/dfm", shipped=shipped)
    assert (got.source, got.fell_back) == ("hub", False)


def test_hub_timeout_setting(monkeypatch):
    monkeypatch.delenv("BLENDTALK_HUB_TIMEOUT", raising=False)
    assert hub_timeout() == HUB_TIMEOUT_S
    monkeypatch.setenv("BLENDTALK_HUB_TIMEOUT", "2.5")
    assert hub_timeout() == 2.5
    for bad in ("0", "-1", "soon", "nan", "inf"):
        monkeypatch.setenv("BLENDTALK_HUB_TIMEOUT", bad)
        with pytest.raises(ValueError, match="BLENDTALK_HUB_TIMEOUT.*seconds > 0"):
            hub_timeout()


def test_pipeline_on_a_slow_hub_serves_the_shipped_dfm_and_says_so(slow_hub, tmp_path, monkeypatch):
    from blendtalk.pipeline import Pipeline

    hub = slow_hub("/api/models/")
    tiny_dfm(tmp_path / "src")
    hub.add("org/dfm", tmp_path / "src")
    monkeypatch.setenv("BLENDTALK_HUB_TIMEOUT", str(TIMEOUT_S))
    pipe = Pipeline.from_pretrained(dfm="org/dfm", speech="visemes", device="cpu")
    line = pipe.sources[0]
    assert "shipped" in line and "fallback" in line and "org/dfm" in line and f"within {TIMEOUT_S:g} s" in line
    assert pipe.dfm.config.num_vertices == pipe.rig.num_vertices  # the shipped DFM, not the tiny one


# ---------------------------------------------------------------------------------------------
# A training run killed with SIGKILL

TRAIN_SCRIPT = """
import sys
from blendtalk.training.losses import DFMLossConfig
from blendtalk.models.dfm import DFMConfig
from blendtalk.training.dfm import DFMTrainConfig, train_dfm
model = DFMConfig(num_vertices={v}, num_blendshapes=4, map_size=32, channels=(8, 8, 8, 8))
train_dfm(DFMTrainConfig(data=sys.argv[1], out=sys.argv[2], model=model, batch_size=8, epochs=0.2, val_every=3,
                         device="cpu"))
"""


def metrics(run: Path) -> list[dict]:
    """The complete lines of a run's metrics: the trainer may be halfway through appending the next."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().split("\n")[:-1]]


@pytest.mark.slow
def test_training_killed_mid_run_resumes_with_nothing_lost(tiny_corpus, tmp_path):
    script = TRAIN_SCRIPT.format(v=load_rig().num_vertices)
    proc = start([sys.executable, "-c", script, str(tiny_corpus), str(tmp_path / "killed")], tmp_path / "train.log")
    run = wait_for(proc, lambda: next((r for r in (tmp_path / "killed").glob("dfm-*")
                                       if (r / "metrics.jsonl").is_file() and len(metrics(r)) >= 3), None), 120)
    proc.kill()
    proc.wait()
    state = torch.load(run / "state.pt", weights_only=True)
    config = load_train_config(run)
    total = 36  # 0.2 epoch of 1440 expression frames at batch 8
    # Killed after 3 validations were logged (state.pt, written after each line, may be one behind:
    # the resume then drops that line and computes it again).
    assert 6 <= state["step"] < total
    # Every file the run holds is whole: the latest checkpoint and the best one load strictly.
    from blendtalk.face.geometry import load_square_map

    smap = load_square_map(load_rig(), config.model.map_size).matrix()
    for part in ("checkpoint", "best"):
        DeformationFusionModule.from_pretrained(run / part, smap)

    train_dfm(config, run_dir=run, resume=True)
    reference = train_dfm(replace(config, out=str(tmp_path / "ref")))
    got, want = metrics(run), metrics(reference)
    assert [m["step"] for m in got] == list(range(3, total + 1, 3)) == [m["step"] for m in want]  # no gap, no repeat
    for a, b in zip(got, want, strict=True):  # the resumed run is the uninterrupted run: same batches, same losses
        assert a["loss"]["total"] == pytest.approx(b["loss"]["total"], rel=1e-4), a["step"]
    final = DeformationFusionModule.from_pretrained(run / "checkpoint", smap).state_dict()
    uninterrupted = DeformationFusionModule.from_pretrained(reference / "checkpoint", smap).state_dict()
    for name, tensor in uninterrupted.items():
        torch.testing.assert_close(final[name], tensor, rtol=1e-3, atol=1e-6)
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))


def test_a_save_interrupted_at_any_point_is_repaired(tmp_path):
    """The pieces a kill can leave: a torn metrics line, lines after the saved step, a stale stage folder."""
    from blendtalk.models.dfm import DFMConfig
    from blendtalk.training.dfm import save_checkpoint, trim_metrics

    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": {"total": 1.0 / s}}) + "\n" for s in (3, 6, 9)) + '{"step": 12, "lo')
    trim_metrics(log, step=6)
    assert [m["step"] for m in metrics(tmp_path)] == [3, 6]
    stale = tmp_path / ".checkpoint.tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half a file")
    model = DeformationFusionModule(DFMConfig(num_vertices=10, num_blendshapes=2, use_geometric_map=False, mlp_hidden=(8,)))
    save_checkpoint(model, tmp_path / "checkpoint")
    assert not stale.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "metrics.jsonl"]
    loaded = DeformationFusionModule.from_pretrained(tmp_path / "checkpoint")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def start(cmd: list[str], log: Path, tmpdir: Path | None = None) -> subprocess.Popen:
    """A subprocess with its stderr in `log` (a file: a pipe nobody reads could fill and block it)
    and, if given, its own TMPDIR."""
    env = {**ENV, "TMPDIR": str(tmpdir)} if tmpdir is not None else ENV
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=f)
    proc.log = log
    return proc


def wait_for(proc: subprocess.Popen, found, timeout: float, every: float = 0.005):
    """Poll `found()` until it returns something truthy (returned) while `proc` runs; fail if it ends first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (value := found()):
            return value
        if proc.poll() is not None:
            pytest.fail(f"the process ended (code {proc.returncode}) before the moment to stop it came: "
                        f"{proc.log.read_text()[-2000:]}")
        time.sleep(every)
    proc.kill()
    pytest.fail(f"nothing to stop it at after {timeout} s")


# ---------------------------------------------------------------------------------------------
# The CLI killed mid-way


def cli(out: Path, *extra: str, size: int = 64) -> subprocess.Popen:
    """`python -m blendtalk animate` writing `out`, with its temporary folder beside out's folder."""
    cmd = [sys.executable, "-m", "blendtalk", "animate", str(WAV), "--emotion", "happy", "-o", str(out),
           "--size", str(size), "--speech-model", "visemes", "--quiet", *extra]
    tmpdir = out.parent.with_name("tmp")
    tmpdir.mkdir(exist_ok=True)
    return start(cmd, out.parent.with_suffix(".log"), tmpdir)


def temp_parts(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.part")) if folder.is_dir() else []


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
@pytest.mark.slow
def test_cli_killed_while_encoding_leaves_no_video(tmp_path, sig):
    folder = tmp_path / "outputs"
    folder.mkdir()
    out, exports = folder / "out.mp4", folder / "exports"
    proc = cli(out, "--export-dir", str(exports), size=512)  # 512 px: a few seconds of rendering into ffmpeg
    wait_for(proc, lambda: temp_parts(folder), 120)
    proc.send_signal(sig)
    proc.wait(timeout=30)
    stderr = proc.log.read_text()
    assert not out.exists() and not exports.exists()
    left = [p.name for p in folder.iterdir()]
    scratch = [p.name for p in (tmp_path / "tmp").iterdir() if p.name.startswith("blendtalk")]  # not torch's caches
    if sig == signal.SIGTERM:  # stopped like Ctrl-C: the clean-up ran
        assert proc.returncode == 130 and "interrupted" in stderr, stderr
        assert left == [] and scratch == [], (left, scratch)
    else:  # nothing can clean up after SIGKILL: only hidden, clearly temporary names remain
        assert proc.returncode == -signal.SIGKILL
        assert all(name.startswith(".out.mp4.") and name.endswith(".part") for name in left), left
        assert all(name.startswith("blendtalk-video-") for name in scratch), scratch  # the speech wav for ffmpeg


@pytest.mark.slow
def test_cli_killed_while_exporting_leaves_only_whole_files(tmp_path):
    from blendtalk.render.video import probe

    (tmp_path / "outputs").mkdir()
    out, exports = tmp_path / "outputs" / "out.mp4", tmp_path / "outputs" / "exports"
    proc = cli(out, "--export-dir", str(exports))
    wait_for(proc, lambda: temp_parts(exports), 120)
    proc.kill()
    proc.wait()
    assert probe(out)["video"]["frames"] == 93  # written (whole) before the exports began
    frames = 93
    for path in exports.iterdir():
        if path.name.startswith("."):
            assert path.name.endswith(".part"), path.name  # a temporary name, never a final one
            continue
        if path.suffix == ".npy":
            assert np.load(path).shape[0] == frames
        elif path.suffix == ".zip":
            with zipfile.ZipFile(path) as z:
                assert z.testzip() is None and len(z.namelist()) == frames
        elif path.suffix == ".json":
            assert len(json.loads(path.read_text())["frames"]) == frames
        elif path.suffix == ".csv":
            assert len(path.read_text().splitlines()) == frames + 1
        elif path.suffix == ".glb":
            assert int.from_bytes(path.read_bytes()[8:12], "little") == path.stat().st_size  # glTF header length
        else:
            pytest.fail(f"unexpected export {path.name}")


# ---------------------------------------------------------------------------------------------
# A read-only or full output folder


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size, read_only) -> a fresh tmpfs folder; skipped where tmpfs cannot be mounted (not root)."""
    mounted = []

    def mount(size: str, read_only: bool = False) -> Path:
        folder = tmp_path / f"mnt{len(mounted)}"
        folder.mkdir()
        opts = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def run_cli(capsys, *argv) -> tuple[int, list[str]]:
    code = cli_main(["animate", str(WAV), "--size", "64", "--speech-model", "visemes", "--quiet", *map(str, argv)])
    return code, [line for line in capsys.readouterr().err.splitlines() if line.startswith("blendtalk:")]


@pytest.mark.slow
def test_read_only_output_folders_are_refused_before_any_work(tmpfs, tmp_path, capsys):
    ro = tmpfs("64k", read_only=True)
    code, lines = run_cli(capsys, "-o", ro / "out.mp4")
    assert code == 2 and len(lines) == 1 and "not writable" in lines[0] and str(ro) in lines[0]
    code, lines = run_cli(capsys, "-o", tmp_path / "out.mp4", "--export-dir", ro / "exports")
    assert code == 2 and len(lines) == 1 and "not writable" in lines[0]
    assert not (tmp_path / "out.mp4").exists()


@pytest.mark.slow
def test_full_disk_is_one_clear_line_and_leaves_nothing(tmpfs, tmp_path, capsys):
    full = tmpfs("8k")  # the mp4 (~40 kB) and the exports (MB) cannot fit
    code, lines = run_cli(capsys, "-o", full / "out.mp4")
    assert code == 2 and len(lines) == 1 and "no space left" in lines[0] and "writing the video" in lines[0], lines
    assert list(full.iterdir()) == []
    code, lines = run_cli(capsys, "-o", tmp_path / "out.mp4", "--export-dir", full / "exports")
    assert code == 2 and len(lines) == 1 and "no space left" in lines[0] and "exports" in lines[0], lines
    assert [p for p in full.rglob("*") if p.is_file()] == []  # no half-written export under any name
