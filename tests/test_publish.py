"""Publishing: model card contents, the files uploaded (through a mocked HfApi), input errors, the CLI."""

import json
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import huggingface_hub
import pytest
import torch

from blendtalk.model_card import build_model_card, read_metrics
from blendtalk.publish import find_publishable, push_to_hub
from blendtalk.models.audio_encoders import AudioEncoderConfig
from blendtalk.models.dfm import DeformationFusionModule, DFMConfig
from blendtalk.models.faceformer import FaceFormer, FaceFormerConfig

from train import publish  # train/publish.py (pytest.ini puts the root on the path)

V = 10
COMMIT = "c" * 40


@pytest.fixture(autouse=True)
def hf_home(tmp_path, monkeypatch):
    """Nothing here may read or write the real ~/.cache/huggingface, nor use a real token."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)


def make_run(root: Path, **train_overrides) -> Path:
    """A DFM run folder as blendtalk.training.dfm writes it: train_config.json, best/, checkpoint/, metrics.jsonl."""
    torch.manual_seed(0)
    model = DeformationFusionModule(DFMConfig(num_vertices=V, num_blendshapes=2, use_geometric_map=False, mlp_hidden=(8,)))
    model.save_pretrained(root / "best")
    model.save_pretrained(root / "checkpoint")
    torch.save({"step": 3}, root / "state.pt")
    train = {"data": "/home/alice/data/synth", "speech_root": None, "expression_root": None, "out": "runs",
             "model": {"num_vertices": V}, "lr": 3e-4, "batch_size": 128} | train_overrides
    (root / "train_config.json").write_text(json.dumps(train))
    lines = [{"step": s, "epoch": s / 10, "minutes": s / 60, "loss": {"total": loss},
              "val": {"dfm": {"fused_mve": mve, "bilabial_gap_by_emotion": {"happy": 1.0}}, "interpolation": {"fused_mve": 9.0}}}
             for s, loss, mve in [(100, 0.5, 2.5), (200, 0.3, 1.25), (300, 0.2, 1.75)]]
    (root / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"step": 4')  # torn last line
    return root


def fake_api(record: dict) -> mock.MagicMock:
    """An HfApi whose upload_folder records the staged files and the card while the folder still exists."""
    api = mock.MagicMock(spec=huggingface_hub.HfApi)
    api.create_repo.return_value = "https://huggingface.co/org/dfm"

    def upload_folder(*, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        record["files"] = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        record["card"] = (folder / "README.md").read_text()
        return SimpleNamespace(oid=COMMIT)

    api.upload_folder.side_effect = upload_folder
    return api


def test_read_metrics_skips_torn_line(tmp_path):
    run = make_run(tmp_path / "run")
    assert [m["step"] for m in read_metrics(run / "metrics.jsonl")] == [100, 200, 300]


def test_model_card_synthetic_run(tmp_path):
    run = make_run(tmp_path / "run")
    checkpoint, run_dir = find_publishable(run)
    assert (checkpoint, run_dir) == (run / "best", run)
    card = build_model_card(checkpoint, run_dir, "org/dfm")
    header = card.split("---")[1]
    assert "library_name: blendtalk" in header and "license: mit" in header and "- blendtalk" in header
    assert "Synthetic corpora" in card and "CC0 1.0" in card
    assert "best at step 200" in card.replace("(lowest score) ", "") and "last at step 300" in card
    assert "| val.dfm.fused_mve | 1.25 | 1.75 |" in card and "| loss.total | 0.3 | 0.2 |" in card
    assert 'resolve_checkpoint("dfm", "org/dfm")' in card and "load_dfm(ckpt.path)" in card
    assert "/home/alice" not in card and '"data": "synth"' in card  # local paths reduced to their last name
    assert '"num_blendshapes": 2' in card and "## Limitations" in card and "## Intended use" in card and "V=10" in card


def test_model_card_names_real_datasets(tmp_path):
    run = make_run(tmp_path / "run", speech_root="/data/VOCASET", expression_root="/data/florence")
    card = build_model_card(run / "best", run)
    assert "VOCASET" in card and "Florence4D" in card and "Synthetic corpora" not in card
    assert "their own licences" in card


def test_model_card_speech_checkpoint_without_run(tmp_path):
    config = FaceFormerConfig(num_vertices=V, feature_dim=8, num_heads=2, encoder=AudioEncoderConfig(hidden_dim=8))
    FaceFormer(config).save_pretrained(tmp_path / "speech")
    checkpoint, run = find_publishable(tmp_path / "speech")
    assert (checkpoint, run) == (tmp_path / "speech", None)
    card = build_model_card(checkpoint, run, "org/speech")
    assert "# blendtalk FaceFormer speech model" in card and "- speech-driven-animation" in card
    assert "No `train_config.json`" in card and "No `metrics.jsonl`" in card and "English" in card
    assert "load_speech_model(ckpt.path)" in card and 'resolve_checkpoint("speech", "org/speech")' in card


def test_push_to_hub_uploads_checkpoint_and_card(tmp_path):
    run = make_run(tmp_path / "run")
    record = {}
    api = fake_api(record)
    result = push_to_hub(run, "org/dfm", private=True, revision="v1", token="hf_x", api=api)
    api.create_repo.assert_called_once_with("org/dfm", private=True, exist_ok=True, token="hf_x")
    assert api.upload_folder.call_args.kwargs["repo_id"] == "org/dfm"
    assert record["files"] == ["README.md", "config.json", "metrics.jsonl", "model.safetensors"]  # no state.pt, no pickle
    assert "library_name: blendtalk" in record["card"] and "| val.dfm.fused_mve |" in record["card"]
    api.create_tag.assert_called_once_with("org/dfm", tag="v1", revision=COMMIT, token="hf_x")
    assert (result.repo_id, result.commit, result.tag) == ("org/dfm", COMMIT, "v1")
    assert sorted(p.name for p in (run / "best").iterdir()) == ["README.md", "config.json", "model.safetensors"]  # untouched

    api = fake_api(record)
    push_to_hub(run / "checkpoint", "org/dfm", token="hf_x", api=api)  # a bare checkpoint folder, no tag
    api.create_tag.assert_not_called()
    assert "config.json" in record["files"]


def test_push_to_hub_errors(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run")
    api = fake_api({})
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        push_to_hub(tmp_path / "nope", "org/dfm", token="t", api=api)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither a checkpoint folder"):
        push_to_hub(tmp_path / "empty", "org/dfm", token="t", api=api)
    (run / "best" / "model.safetensors").unlink()
    torch.save({}, run / "best" / "pytorch_model.bin")
    with pytest.raises(ValueError, match="only pickle weights"):
        push_to_hub(run, "org/dfm", token="t", api=api)
    run = make_run(tmp_path / "run2")
    for bad in ("dfm", "org/a/b", "org/na..me"):
        with pytest.raises(ValueError, match="repo id"):
            push_to_hub(run, bad, token="t", api=api)
    with pytest.raises(ValueError, match="without '@'"):
        push_to_hub(run, "org/dfm@v1", token="t", api=api)
    with pytest.raises(ValueError, match="not a valid tag"):
        push_to_hub(run, "org/dfm", revision="v 1", token="t", api=api)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(ValueError, match="no Hugging Face token.*HF_TOKEN"):
        push_to_hub(run, "org/dfm", api=api)
    api.upload_folder.assert_not_called()


def test_cli_dry_run_and_errors(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    assert publish.main([str(run), "--repo-id", "org/dfm", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would upload" in out and "model.safetensors" in out and "library_name: blendtalk" in out
    assert publish.main([str(tmp_path / "missing"), "--repo-id", "org/dfm"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert publish.main([str(run), "--repo-id", "bad", "--token", "t"]) == 2
    assert "repo id" in capsys.readouterr().err


def test_cli_uploads_through_hfapi(tmp_path, monkeypatch, capsys):
    run = make_run(tmp_path / "run")
    record = {}
    api = fake_api(record)
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda **kwargs: api)
    assert publish.main([str(run), "--repo-id", "org/dfm", "--revision", "v2", "--token", "hf_x"]) == 0
    assert "org/dfm@v2" in capsys.readouterr().out
    api.create_tag.assert_called_once_with("org/dfm", tag="v2", revision=COMMIT, token="hf_x")
    assert "README.md" in record["files"]
