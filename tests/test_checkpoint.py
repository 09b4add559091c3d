"""The one checkpoint format: save_pretrained writes whole files, the factories load what was saved,
one device choice, one file hash."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from blendtalk.face.geometry import load_square_map
from blendtalk.models.audio_encoders import AudioEncoderConfig
from blendtalk.models.checkpoint import file_sha256, pick_device
from blendtalk.models.dfm import DeformationFusionModule, DFMConfig, load_dfm
from blendtalk.models.faceformer import FaceFormer, FaceFormerConfig, load_speech_model


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(None).type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="unknown device"):
        pick_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            pick_device("cuda")


def test_load_dfm_builds_the_rig_map_and_gives_the_saved_outputs(rig, tmp_path):
    config = DFMConfig(num_vertices=rig.num_vertices, num_blendshapes=4, map_size=32, channels=(8, 8, 8, 8))
    torch.manual_seed(0)
    model = DeformationFusionModule(config, load_square_map(rig, 32).matrix()).eval()
    folder = model.save_pretrained(tmp_path / "dfm")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert "load_dfm" in (folder / "README.md").read_text()
    loaded = load_dfm(folder, rig, device="cpu")
    assert not loaded.training
    d = torch.randn(3, rig.num_vertices, 3) * 1e-3
    with torch.no_grad():
        assert torch.equal(model.encode_speech(d), loaded.encode_speech(d))
        assert torch.equal(model.encode_expression(d), loaded.encode_expression(d))


def test_load_dfm_refuses_a_rig_of_another_topology(rig, tmp_path):
    config = DFMConfig(num_vertices=rig.num_vertices + 1, num_blendshapes=2, use_geometric_map=False, mlp_hidden=(8,))
    DeformationFusionModule(config).save_pretrained(tmp_path / "flat")
    load_dfm(tmp_path / "flat", rig, "cpu")  # no map: any rig
    geometric = DFMConfig(num_vertices=rig.num_vertices + 1, num_blendshapes=2, map_size=32, channels=(8, 8, 8, 8))
    sparse = torch.sparse_coo_tensor(torch.zeros(2, 0, dtype=torch.long), torch.zeros(0), (32 * 32, rig.num_vertices + 1),
                                     check_invariants=True)
    DeformationFusionModule(geometric, sparse).save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="trained for V="):
        load_dfm(tmp_path / "other", rig, "cpu")


def test_load_speech_model_gives_the_saved_outputs(tmp_path):
    encoder = AudioEncoderConfig(kind="phonetic", input_dim=12, cmvn_dims=4, hidden_dim=16, conv_layers=1)
    config = FaceFormerConfig(num_vertices=10, feature_dim=16, num_heads=2, num_layers=1, period=5, num_speakers=2,
                              window=60, encoder=encoder)
    torch.manual_seed(0)
    model = FaceFormer(config).eval()
    with torch.no_grad():
        for layer in (model.motion_encoder, model.motion_decoder):
            layer.weight.normal_(0.0, 0.1)
    loaded = load_speech_model(model.save_pretrained(tmp_path / "speech"), device="cpu")
    assert not loaded.training
    x, style = torch.randn(1, 9, 12), torch.tensor([1])
    with torch.no_grad():
        assert torch.equal(model.generate(x, 9, style), loaded.generate(x, 9, style))


def test_save_pretrained_replaces_a_stale_stage_and_keeps_other_files(tmp_path):
    """A kill mid-save leaves at worst the hidden stage folder; the next save replaces it. Files
    beside the checkpoint's own (a fitted rig map) are not touched."""
    folder = tmp_path / "dfm"
    (folder / "mapping_arkit").mkdir(parents=True)
    (folder / "mapping_arkit" / "config.json").write_text("{}")
    stale = tmp_path / ".dfm.tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half a file")
    model = DeformationFusionModule(DFMConfig(num_vertices=10, num_blendshapes=2, use_geometric_map=False, mlp_hidden=(8,)))
    model.save_pretrained(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dfm"]
    assert (folder / "mapping_arkit" / "config.json").read_text() == "{}"
    assert json.loads((folder / "config.json").read_text())["model_type"] == "blendtalk-dfm"
    loaded = DeformationFusionModule.from_pretrained(folder)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_file_sha256(tmp_path):
    path = tmp_path / "f.bin"
    data = bytes(range(256)) * 5000  # more than one 1 MiB block
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_loading_draws_no_random_numbers_and_keeps_the_buffers(tmp_path):
    # The build that receives stored weights skips random init: the global RNG is untouched,
    # and non-persistent buffers (ALiBi slopes) are still computed.
    encoder = AudioEncoderConfig(kind="phonetic", input_dim=12, cmvn_dims=4, hidden_dim=16, conv_layers=1)
    config = FaceFormerConfig(num_vertices=10, feature_dim=16, num_heads=2, num_layers=1, period=5, num_speakers=2,
                              window=60, encoder=encoder)
    model = FaceFormer(config).eval()
    folder = model.save_pretrained(tmp_path / "speech")
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    loaded = load_speech_model(folder, device="cpu")
    assert torch.equal(torch.rand(4), expected)
    assert torch.equal(loaded.slopes, model.slopes)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_checking_the_shipped_dfm_does_not_import_the_compiler():
    # normal_ on the meta device used to import torch._dynamo (1-3.5 s of every CLI start).
    code = ("import sys; from blendtalk.models.dfm import check_pretrained; check_pretrained('assets/dfm'); "
            "print('torch._dynamo' in sys.modules)")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
