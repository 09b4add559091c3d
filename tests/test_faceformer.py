"""FaceFormer and its audio encoders on tiny configs (CPU, seconds)."""

import time

import pytest
import torch

from blendtalk.models.audio_encoders import (
    AudioEncoderConfig, PhoneticEncoder, Wav2Vec2Encoder, build_audio_encoder,
)
from blendtalk.models.faceformer import (
    FaceFormer,
    FaceFormerConfig,
    KVCache,
    alibi_slopes,
    periodic_positional_encoding,
    temporal_bias,
)

V, F_IN, D = 7, 12, 16
TINY_W2V = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on the shared 2-core machine the
    thread hand-offs make them up to 100x slower; restore the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_phonetic(**kw) -> AudioEncoderConfig:
    return AudioEncoderConfig(kind="phonetic", input_dim=F_IN, cmvn_dims=4, hidden_dim=16, conv_layers=1, **kw)


def tiny_config(**kw) -> FaceFormerConfig:
    args = dict(num_vertices=V, feature_dim=D, num_heads=2, num_layers=2, period=5, num_speakers=3, window=600,
                encoder=tiny_phonetic())
    args.update(kw)
    return FaceFormerConfig(**args)


def randomize(model: FaceFormer, seed: int = 0) -> FaceFormer:
    """Give the zero-initialised motion encoder/decoder random weights, so outputs depend on everything."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in (model.motion_encoder, model.motion_decoder):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * 0.3)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g) * 0.1)
    return model


def features(b: int, t: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, t, F_IN, generator=torch.Generator().manual_seed(seed))


# ---- pure pieces ----

def test_slopes_match_faceformer():
    assert torch.allclose(alibi_slopes(4), torch.tensor([1 / 4, 1 / 16, 1 / 64, 1 / 256]))
    assert alibi_slopes(6).shape == (6,)


def test_temporal_bias_is_periodic_causal_and_windowed():
    pos = torch.arange(10)
    bias = temporal_bias(pos, pos, torch.tensor([1.0, 0.5]), period=3, window=7)  # (H, L, M)
    assert bias[0, 5, 5] == 0 and bias[0, 5, 3] == 0 and bias[0, 5, 2] == -1 and bias[1, 9, 3] == -1.0
    assert torch.isinf(bias[:, 4, 5]).all()  # future
    assert torch.isinf(bias[:, 9, 2]).all() and not torch.isinf(bias[:, 9, 3]).any()  # window of 7
    pe = periodic_positional_encoding(torch.arange(12), 8, 4)
    assert torch.allclose(pe[:4], pe[4:8]) and not torch.allclose(pe[0], pe[1])


# ---- encoders ----

def test_phonetic_encoder_shape_and_bad_dim():
    enc = build_audio_encoder(tiny_phonetic(), D)
    assert isinstance(enc, PhoneticEncoder)
    assert enc(features(2, 9), 9).shape == (2, 9, D)
    with pytest.raises(ValueError, match=r"\(2, 9, 11\)"):
        enc(torch.zeros(2, 9, F_IN - 1), 9)
    with pytest.raises(ValueError, match=r"T=8"):
        enc(features(2, 9), 8)


def test_wav2vec2_encoder_shape_frozen_cnn_and_gain_invariance():
    enc = build_audio_encoder(AudioEncoderConfig(kind="wav2vec2", wav2vec2=TINY_W2V), D).eval()
    assert isinstance(enc, Wav2Vec2Encoder)
    audio = torch.randn(2, 16_000, generator=torch.Generator().manual_seed(1))
    out = enc(audio, 30)
    assert out.shape == (2, 30, D)
    assert not any(p.requires_grad for p in enc.model.feature_extractor.parameters())
    assert any(p.requires_grad for p in enc.model.encoder.parameters())
    assert torch.allclose(enc(3.0 * audio + 0.1, 30), out, atol=1e-4)  # per-clip normalisation
    assert enc.config.wav2vec2["hidden_size"] == 32  # full config kept for saving
    with pytest.raises(ValueError, match=r"num_frames=90"):
        enc(audio, 90)
    with pytest.raises(ValueError, match=r"\(2, 100\)"):
        enc(audio[:, :100], 1)


def test_wav2vec2_local_folder_and_clear_offline_error(tmp_path):
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    Wav2Vec2Model(Wav2Vec2Config(**TINY_W2V)).save_pretrained(tmp_path / "w2v")
    enc = build_audio_encoder(AudioEncoderConfig(kind="wav2vec2", pretrained=str(tmp_path / "w2v")), D)
    assert enc.model.config.hidden_size == 32
    # local_files_only: never tries the network, and the message says what to do instead.
    cfg = AudioEncoderConfig(kind="wav2vec2", pretrained="blendtalk-test/no-such-wav2vec2", local_files_only=True)
    with pytest.raises(OSError, match=r"local folder.*phonetic"):
        build_audio_encoder(cfg, D)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_audio_encoder(AudioEncoderConfig(kind="wav2vec2", pretrained=str(tmp_path / "missing")), D)
    with pytest.raises(ValueError, match="build_faceformer"):
        FaceFormer(tiny_config(encoder=cfg))  # architecture unknown without loading


# ---- model ----

def test_untrained_model_outputs_zero_displacement():
    model = FaceFormer(tiny_config())
    x, spk = features(2, 11), torch.tensor([0, 2])
    assert torch.count_nonzero(model.generate(x, 11, spk)) == 0
    assert torch.count_nonzero(model(x, 11, spk, torch.randn(2, 11, V, 3))) == 0


def test_cache_matches_full_recomputation_across_window_wrap():
    torch.manual_seed(0)  # the model is drawn from the global generator: other tests must not pick it
    model = randomize(FaceFormer(tiny_config(window=8, alignment_radius=1)))
    x, spk = features(2, 23), torch.tensor([1, 0])
    fast = model.generate(x, 23, spk, use_cache=True)
    slow = model.generate(x, 23, spk, use_cache=False)
    assert fast.abs().max() > 1e-2
    assert torch.allclose(fast, slow, atol=1e-5)
    # Teacher forcing on the generated motion reproduces it: training and inference share one path.
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x, 23, spk, fast), fast, atol=1e-5)


def test_window_limits_lookback():
    model = randomize(FaceFormer(tiny_config(window=4, num_layers=1))).eval()
    t = 12
    target = torch.randn(1, t, V, 3)
    x, spk = features(1, t), torch.tensor([0])
    changed = target.clone()
    changed[:, 2] += 1.0  # the input of frame 3 only; frames >= 3 + 4 must not see it
    with torch.no_grad():
        a, b = model(x, t, spk, target), model(x, t, spk, changed)
    diff = (a - b).abs().amax(dim=(0, 2, 3))
    assert (diff[:3] == 0).all() and (diff[3:7] > 0).all() and (diff[7:] == 0).all()


def test_speaker_style_and_mixture():
    model = randomize(FaceFormer(tiny_config())).eval()
    x = features(1, 6).expand(3, -1, -1)
    out = model.generate(x, 6, torch.tensor([0, 1, 2]))
    assert not torch.allclose(out[0], out[1])
    mix = model.generate(x[:1], 6, torch.tensor([[0.0, 1.0, 0.0]]))
    assert torch.allclose(mix[0], out[1], atol=1e-6)


def test_motion_scale_only_changes_units():
    """A model in mm (motion_scale=1e-3) on metres equals the same weights in metres on mm data, / 1000."""
    metres = randomize(FaceFormer(tiny_config())).eval()
    mm = FaceFormer(tiny_config(motion_scale=1e-3)).eval()
    mm.load_state_dict(metres.state_dict())
    x, spk = features(2, 9), torch.tensor([0, 1])
    target = torch.randn(2, 9, V, 3)
    with torch.no_grad():
        assert torch.allclose(mm(x, 9, spk, target * 1e-3), metres(x, 9, spk, target) * 1e-3, atol=1e-9)
    assert torch.allclose(mm.generate(x, 9, spk), metres.generate(x, 9, spk) * 1e-3, atol=1e-9)
    with pytest.raises(ValueError, match="motion_scale"):
        tiny_config(motion_scale=0.0)


def test_save_load_identical_output(tmp_path):
    model = randomize(FaceFormer(tiny_config()))
    model.save_pretrained(tmp_path / "ckpt")
    loaded = FaceFormer.from_pretrained(tmp_path / "ckpt", device="cpu")
    assert loaded.config == model.config
    x, spk = features(1, 10), torch.tensor([2])
    assert torch.equal(model.generate(x, 10, spk), loaded.generate(x, 10, spk))


def test_save_load_wav2vec2_model_offline(tmp_path):
    model = randomize(FaceFormer(tiny_config(encoder=AudioEncoderConfig(kind="wav2vec2", wav2vec2=TINY_W2V))))
    model.save_pretrained(tmp_path / "ckpt")
    loaded = FaceFormer.from_pretrained(tmp_path / "ckpt")
    audio = torch.randn(1, 8000)
    assert torch.equal(model.generate(audio, 15, torch.tensor([1])), loaded.generate(audio, 15, torch.tensor([1])))


def test_load_errors_name_the_problem(tmp_path):
    model = FaceFormer(tiny_config())
    folder = model.save_pretrained(tmp_path / "ckpt")
    bigger = FaceFormer(tiny_config(num_vertices=V + 1))
    bigger.save_pretrained(tmp_path / "other")
    (folder / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="motion_encoder.weight"):
        FaceFormer.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        FaceFormer.from_pretrained(folder)


def test_bad_inputs_raise_naming_the_shape():
    model = FaceFormer(tiny_config())
    x = features(2, 8)
    with pytest.raises(ValueError, match=r"\(2, 8, 13\)"):
        model.generate(torch.zeros(2, 8, F_IN + 1), 8, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        model.generate(x, 8, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"\(B=2,\)"):
        model.generate(x, 8, torch.tensor([0]))
    with pytest.raises(ValueError, match=r"T=9.*got \(2, 8, 12\)"):
        model.generate(x, 9, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\(2, 7, 7, 3\)"):
        model(x, 8, torch.tensor([0, 1]), torch.zeros(2, 7, V, 3))
    with pytest.raises(ValueError, match="divisible"):
        tiny_config(feature_dim=15)


def test_adam_steps_lower_the_loss():
    torch.manual_seed(0)
    model = FaceFormer(tiny_config(num_layers=1, dropout=0.0))
    x, spk = features(2, 20, seed=3), torch.tensor([0, 1])
    # A target driven by the audio features, with a per-speaker offset.
    target = torch.tanh(x[..., :3])[..., None, :].expand(-1, -1, V, -1) * torch.tensor([1.0, 0.5])[:, None, None, None]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = (model(x, 20, spk, target) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    # Autoregressive training mode is differentiable too.
    out = model(x, 20, spk, teacher_forcing=False)
    out.pow(2).mean().backward()
    assert model.motion_encoder.weight.grad is not None


def test_forty_seconds_generate_in_bounded_time_and_memory(monkeypatch):
    capacities = []
    original = KVCache.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        capacities.append(self.keys.shape)

    monkeypatch.setattr(KVCache, "__init__", spy)
    model = randomize(FaceFormer(tiny_config(num_layers=1)))
    t = 1200  # 40 s at 30 fps, beyond the original FaceFormer's 600-frame tables
    start = time.perf_counter()
    out = model.generate(features(1, t), t, torch.tensor([0]))
    elapsed = time.perf_counter() - start
    assert out.shape == (1, t, V, 3) and torch.isfinite(out).all()
    assert capacities == [(1, 2, 600, D // 2)]  # one fixed-size cache of W = 600 frames, never grown
    assert elapsed < 30.0


def test_end_to_end_on_the_shipped_speech_clip():
    from blendtalk.speech.audio import num_frames
    from blendtalk.speech.features import phonetic_features
    from blendtalk.speech.phones import ARPABET
    from blendtalk.speech.phonetics import load_arctic_fixture

    audio, _, transcript = load_arctic_fixture()
    feats = phonetic_features(audio, transcript)  # (T, 40 + 80)
    t = num_frames(audio.shape[0])
    assert feats.shape == (t, len(ARPABET) + 80)
    assert (feats[:, : len(ARPABET)].sum(1) == 1).all()  # one phone per frame
    config = FaceFormerConfig(num_vertices=V, feature_dim=D, encoder=AudioEncoderConfig(hidden_dim=16))
    model = randomize(FaceFormer(config))
    out = model.generate(torch.from_numpy(feats)[None], t, torch.tensor([0]))
    assert out.shape == (1, t, V, 3) and torch.isfinite(out).all()


@pytest.mark.gpu
def test_cuda_matches_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # cuDNN's default TF32 convs differ by ~1e-3
    model = randomize(FaceFormer(tiny_config(window=8)))
    x, spk = features(2, 20), torch.tensor([0, 1])
    cpu = model.generate(x, 20, spk)
    model.save_pretrained(tmp_path / "ckpt")
    gpu = FaceFormer.from_pretrained(tmp_path / "ckpt", device="cuda").generate(x, 20, spk)  # inputs moved for us
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-4), f"max difference {(gpu.cpu() - cpu).abs().max():.3g}"


@pytest.mark.gpu
def test_cuda_graph_matches_eager_steps():
    """A captured step replayed per frame gives the eager loop's frames, past the window (ring wrap)."""
    model = randomize(FaceFormer(tiny_config(window=8))).to("cuda")
    x, spk = features(2, 30), torch.tensor([0, 2])
    eager = model.generate(x, 30, spk, cuda_graph=False)
    graphed = model.generate(x, 30, spk, cuda_graph=True)
    assert torch.allclose(graphed, eager, atol=1e-5)
    short = x[:1, :5]  # another shape: another capture
    assert torch.allclose(model.generate(short, 5, spk[:1]), model.generate(short, 5, spk[:1], cuda_graph=False), atol=1e-5)


def test_cuda_graph_needs_cuda_and_cache():
    model = FaceFormer(tiny_config())
    with pytest.raises(ValueError, match="CUDA device and use_cache"):
        model.generate(features(1, 4), 4, torch.tensor([0]), cuda_graph=True)
