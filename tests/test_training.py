"""The DFM training loop: run folders, validation on synthetic truth, resume, DDP under torchrun."""

import json
import os
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from blendtalk.training.losses import DFMLossConfig
from blendtalk.models.dfm import DeformationFusionModule, DFMConfig
from blendtalk.face.rig import load_rig
from blendtalk.training.dfm import DFMTrainConfig, load_train_config, train_dfm

ROOT = Path(__file__).resolve().parents[1]


def _config(root, out, **kw):
    model = DFMConfig(num_vertices=load_rig().num_vertices, num_blendshapes=4, map_size=32, channels=(8, 8, 8, 8))
    kw = {"batch_size": 8, "epochs": 0.1, "val_every": 100, "val_sentences": 1, "device": "cpu", **kw}
    return DFMTrainConfig(data=str(root), out=str(out), model=model, loss=DFMLossConfig(lambda_orth=0.1), **kw)


@pytest.mark.slow
def test_run_validates_saves_and_resumes(tiny_corpus, tmp_path):
    run = train_dfm(_config(tiny_corpus, tmp_path, lr_schedule="cosine", crop_loss=True))
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines and {"dfm", "interpolation"} <= set(lines[-1]["val"])  # fusion scored against the truth
    assert lines[-1]["loss"]["orth"] >= 0
    for part in ("best", "checkpoint"):
        DeformationFusionModule.from_pretrained(run / part, _map(run))
    saved = load_train_config(run)
    assert saved.lr_schedule == "cosine" and saved.crop_loss and saved.model.num_blendshapes == 4
    steps = lines[-1]["step"]
    train_dfm(replace(saved, epochs=0.2), run_dir=run, resume=True)
    more = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert more[-1]["step"] > steps  # went on from the saved step, in the same folder
    assert train_dfm(_config(tiny_corpus, tmp_path, epochs=0.02)) != run  # a new run never reuses a folder


def test_mix_speech_adds_one_scaled_speech_frame_to_each_expression_frame():
    import torch

    from blendtalk.training.dfm import mix_speech

    d_s, d_e = torch.randn(3, 5, 3), torch.randn(64, 5, 3)
    mixed = mix_speech(d_s, d_e, 0.5, torch.Generator().manual_seed(0))
    assert mixed.shape == d_e.shape
    used = []
    for row in (mixed - d_e).reshape(64, -1):  # each is a * d_s[i] with a in [0, 0.5)
        fits = [(float(row @ f / f.square().sum()), f) for f in d_s.reshape(3, -1)]
        a = next(a for a, f in fits if 0 <= a < 0.5 and torch.allclose(row, a * f, atol=1e-5))
        used.append(a)
    assert len({round(a, 6) for a in used}) > 32  # a scale per frame, not one for the batch


def test_priors_train_and_are_logged(tiny_corpus, tmp_path):
    loss = DFMLossConfig(lambda_invariance=10.0, invariance_mix=0.5, lambda_speech_upper=0.5)
    run = train_dfm(replace(_config(tiny_corpus, tmp_path, epochs=0.02), loss=loss))
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["loss"]["invariance"] >= 0 and 0 <= last["loss"]["speech_upper"] <= 1
    assert load_train_config(run).loss == loss


def _map(run):
    from blendtalk.face.geometry import load_square_map

    return load_square_map(load_rig(), load_train_config(run).model.map_size).matrix()


def test_resume_needs_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_config.json"):
        load_train_config(tmp_path)


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo on Linux")
@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tiny_corpus, tmp_path):
    """Two torchrun processes train one DFM over gloo. Once in about 20 CI runs on the loaded 2-core
    machine a rank died of SIGABRT inside gloo (2026-12-07, not reproduced in 17 runs under load
    since): a worker killed by a signal gets one more try, with the first try's reason kept in the
    warnings summary; a second death, or any other failure, fails the test."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for attempt in (1, 2):
        out_dir = tmp_path / f"try{attempt}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(ROOT / "train/train_dfm.py"), "--data", str(tiny_corpus), "--out", str(out_dir), "-K", "4",
               "--map-size", "32", "--batch-size", "4", "--epochs", "0.05", "--val-every", "1000", "--device", "cpu"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
        if out.returncode == 0 or attempt == 2 or "Signal " not in out.stderr:
            break
        reasons = [line for line in out.stderr.splitlines() if "terminate" in line or "what()" in line or "Signal " in line]
        warnings.warn(f"torchrun try 1: a worker died by a signal; trying again. {' | '.join(reasons)[-1500:]}")
    assert out.returncode == 0, out.stderr[-4000:]
    runs = [p for p in out_dir.iterdir() if (p / "checkpoint").is_dir()]
    assert len(runs) == 1  # only rank 0 writes


def test_cli_rejects_a_bad_model_setting_before_making_corpora(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "train"))
    import train_dfm as cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--data", str(tmp_path / "corpora"), "--out", str(tmp_path), "--map-size", "100"])
    assert exit_info.value.code == 2
    assert "map_size must be a power of two" in capsys.readouterr().err
    assert not (tmp_path / "corpora").exists()  # nothing generated for a run that cannot start


@pytest.mark.gpu
def test_validation_scores_on_the_gpu_as_on_the_cpu(tiny_corpus):
    from blendtalk.evaluation.fusion import evaluate_fusion, fusion_cases
    from blendtalk.models.dfm import interpolate_inputs

    rig = load_rig()
    cases = list(fusion_cases(tiny_corpus, "val", max_sentences=1))
    assert cases
    cpu, gpu = (evaluate_fusion({"interpolation": interpolate_inputs}, cases, rig, device) for device in ("cpu", "cuda"))
    for key in ("fused_mve", "fused_lve", "lip_mve", "upper_face_mve", "bilabial_gap_error"):
        assert gpu["interpolation"][key] == pytest.approx(cpu["interpolation"][key], rel=1e-4), key


@pytest.mark.slow
def test_init_starts_from_a_checkpoint(tiny_corpus, tmp_path):
    """--init: the run starts from the given weights (its first steps stay near them), not from random."""
    from blendtalk.face.geometry import load_square_map

    config = _config(tiny_corpus, tmp_path, epochs=0.02, lr=1e-6)
    torch.manual_seed(123)
    smap = load_square_map(load_rig(), config.model.map_size).matrix()
    start = DeformationFusionModule(config.model, smap)
    start.save_pretrained(tmp_path / "start")
    run = train_dfm(replace(config, init=str(tmp_path / "start")))
    fresh = train_dfm(config)  # the same run without --init
    w0, w1, w2 = (m.blendshape_weight.detach() for m in (
        start, *(DeformationFusionModule.from_pretrained(r / "checkpoint", smap) for r in (run, fresh))))
    assert (w1 - w0).abs().max() < 1e-3 < (w2 - w0).abs().max()
    assert load_train_config(run).init == str(tmp_path / "start")
