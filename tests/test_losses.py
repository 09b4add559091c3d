import pytest
import torch

from blendtalk.training.losses import (
    DFMLossConfig,
    cross_l1,
    dfm_loss,
    l2_loss,
    laplacian_loss,
    reconstruction_loss,
    sparsity_loss,
    unit_scale,
    vertex_weights,
)

V, K = 6, 3


def ring_laplacian(v: int = V) -> torch.Tensor:
    """L = I - D^-1 A of a cycle graph (every vertex has two neighbours), dense (V, V)."""
    a = torch.zeros(v, v)
    idx = torch.arange(v)
    a[idx, (idx + 1) % v] = a[(idx + 1) % v, idx] = 1
    return torch.eye(v) - a / a.sum(1, keepdim=True)


def test_reconstruction_loss_is_unit_scale_and_weighted():
    target = torch.nn.functional.normalize(torch.randn(4, V, 3), dim=-1)  # unit-length displacements
    pred = torch.zeros_like(target)
    torch.testing.assert_close(reconstruction_loss(pred, target), torch.tensor(1.0))
    m = vertex_weights(V, torch.arange(V) < 2, lip_weight=5.0)
    torch.testing.assert_close(reconstruction_loss(pred, target, m), torch.tensor(1.0))
    torch.testing.assert_close(reconstruction_loss(pred, target, 10 * m), torch.tensor(1.0))
    err = torch.zeros(V, 3)
    err[0, 0] = 1.0  # a unit error on one lip vertex only
    torch.testing.assert_close(reconstruction_loss(err, torch.zeros(V, 3), m), 5.0 / m.sum())
    with pytest.raises(ValueError, match="same shape"):
        reconstruction_loss(pred, target[:2])
    with pytest.raises(ValueError, match=r"\(V,\) = \(6,\)"):
        reconstruction_loss(pred, target, torch.ones(5))


def test_vertex_weights_and_unit_scale():
    m = vertex_weights(V, torch.tensor([True, False, False, False, False, True]), lip_weight=3.0)
    assert m.tolist() == [3, 1, 1, 1, 1, 3]
    with pytest.raises(ValueError, match=r"\(V,\) = \(6,\)"):
        vertex_weights(V, torch.ones(5, dtype=torch.bool))
    cropped = vertex_weights(V, torch.arange(V) < 2, 3.0, crop_mask=torch.arange(V) >= 1)
    assert cropped.tolist() == [0, 3, 1, 1, 1, 1]
    d = torch.randn(10, V, 3) * 1e-3
    s = unit_scale(d, m)
    torch.testing.assert_close(reconstruction_loss(torch.zeros_like(d), s * d, m), torch.tensor(1.0))


def test_sparsity_loss_sees_only_cross_domain_halves():
    w_s, w_e = torch.randn(4, 2 * K), torch.randn(5, 2 * K)
    expected = w_s[:, K:].abs().sum(1).mean() + w_e[:, :K].abs().sum(1).mean()
    torch.testing.assert_close(sparsity_loss(w_s, w_e, K), expected)
    w_s2, w_e2 = w_s.clone(), w_e.clone()
    w_s2[:, :K] = 100.0  # own-domain halves are free
    w_e2[:, K:] = -100.0
    torch.testing.assert_close(sparsity_loss(w_s2, w_e2, K), expected)
    with pytest.raises(ValueError, match="K_s = 3"):
        sparsity_loss(w_s[:, :5], w_e, K)
    # Unequal halves (K_s = 2, K_e = 4): the speech half is always the first K_s entries.
    torch.testing.assert_close(sparsity_loss(w_s, w_e, 2), w_s[:, 2:].abs().sum(1).mean() + w_e[:, :2].abs().sum(1).mean())


def test_the_speech_inputs_cross_half_can_pay_a_share_of_the_l1():
    cross_s, cross_e = torch.randn(4, K), torch.randn(5, K)
    speech, expression = cross_s.abs().sum(1).mean(), cross_e.abs().sum(1).mean()
    torch.testing.assert_close(cross_l1(cross_s, cross_e, 0.25), 0.25 * speech + expression)
    out = {"cross_s": cross_s, "cross_e": cross_e, "rec_s": torch.zeros(4, V, 3), "rec_e": torch.zeros(5, V, 3)}
    d_s, d_e = torch.zeros(4, V, 3), torch.zeros(5, V, 3)
    _, parts = dfm_loss(out, d_s, d_e, DFMLossConfig(scale=1.0, lambda_lap=0.0, lambda_reg=0.0, speech_cross_share=0.25))
    assert parts["sparse"] == pytest.approx(float(0.25 * speech + expression))


def test_laplacian_loss():
    lap = ring_laplacian()
    const = torch.ones(2, V, 3)  # a rigid translation is perfectly smooth
    assert laplacian_loss(const, lap) < 1e-12
    spike = torch.zeros(V, 3)
    spike[0, 1] = 1.0
    # (L d)_0 = 1, both neighbours get -1/2: (1 + 1/4 + 1/4) / V
    torch.testing.assert_close(laplacian_loss(spike, lap), torch.tensor(1.5 / V))
    d = torch.randn(3, 4, V, 3)
    torch.testing.assert_close(laplacian_loss(d, lap.to_sparse()), laplacian_loss(d, lap))
    with pytest.raises(ValueError, match=r"\(V, V\) = \(6, 6\)"):
        laplacian_loss(d, torch.eye(5))


def test_l2_loss():
    d = torch.zeros(2, V, 3)
    d[:, 0] = torch.tensor([3.0, 4.0, 0.0])
    torch.testing.assert_close(l2_loss(d), torch.tensor(25.0 / V))


def fake_outputs(seed: int = 0, k_e: int = K):
    """A DFM forward dict with K_s = K speech and k_e expression weights per frame."""
    g = torch.Generator().manual_seed(seed)
    out = {
        "w_s": torch.randn(4, K + k_e, generator=g) * 1e-2,
        "w_e": torch.randn(4, K + k_e, generator=g) * 1e-2,
        "rec_s": torch.randn(4, V, 3, generator=g) * 1e-2,
        "rec_e": torch.randn(4, V, 3, generator=g) * 1e-2,
    }
    out = {k: v.requires_grad_() for k, v in out.items()}
    return out | {"cross_s": out["w_s"][:, K:], "cross_e": out["w_e"][:, :K], "own_e": out["w_e"][:, K:]}


def test_dfm_loss_sparsity_weight_changes_total_and_gradient():
    d_s, d_e = torch.randn(4, V, 3) * 1e-2, torch.randn(4, V, 3) * 1e-2
    m, lap = vertex_weights(V), ring_laplacian()
    grads, totals = {}, {}
    for lam in (0.0, 0.1):
        out = fake_outputs()
        total, parts = dfm_loss(out, d_s, d_e, DFMLossConfig(lambda_sparse=lam), m, lap)
        total.backward()
        grads[lam], totals[lam] = out["w_s"].grad, parts
    assert "sparse" not in totals[0.0]  # a zero lambda really drops the term
    assert grads[0.0] is None  # nothing else depends on the weights
    assert grads[0.1][:, :K].abs().max() == 0 and grads[0.1][:, K:].abs().min() > 0
    assert totals[0.1]["total"] == pytest.approx(totals[0.0]["total"] + 0.1 * totals[0.1]["sparse"], rel=1e-5)


def test_dfm_loss_parts_and_scale():
    out = fake_outputs()
    d_s, d_e = torch.randn(4, V, 3) * 1e-2, torch.randn(4, V, 3) * 1e-2
    config = DFMLossConfig(scale=100.0, lambda_lap=0.5, lambda_reg=1e-3)
    _, parts = dfm_loss(out, d_s, d_e, config, None, ring_laplacian())
    assert set(parts) == {"rec_s", "rec_e", "sparse", "lap", "reg", "total"}
    expected_rec = float(reconstruction_loss(100 * out["rec_s"].detach(), 100 * d_s))
    assert parts["rec_s"] == pytest.approx(expected_rec, rel=1e-5)
    expected = parts["rec_s"] + parts["rec_e"] + config.lambda_sparse * parts["sparse"] + 0.5 * parts["lap"] + 1e-3 * parts["reg"]
    assert parts["total"] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="laplacian"):
        dfm_loss(out, d_s, d_e, config)


def test_cross_cosine_loss_is_zero_for_orthogonal_and_counts_shared_directions():
    from blendtalk.training.losses import cross_cosine_loss

    eye = torch.eye(6)
    assert float(cross_cosine_loss(eye[:, :4], 2)) == pytest.approx(0.0)
    shared = torch.stack([eye[0], eye[1], 3 * eye[0], eye[2]], dim=1)  # B_e's first column = 3 * B_s's first
    assert float(cross_cosine_loss(shared, 2)) == pytest.approx(0.5)  # mean over K_e=2 of (1, 0)


def test_invariance_loss_is_the_mean_squared_change_and_needs_the_mixed_pass():
    from blendtalk.training.losses import invariance_loss

    w = torch.randn(4, K)
    assert float(invariance_loss(w, w)) == 0.0
    assert float(invariance_loss(w + 2.0, w)) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="same shape"):
        invariance_loss(w[:, :2], w)
    out = fake_outputs(k_e=2)  # unequal halves: the expression half is the last 2
    d = torch.randn(4, V, 3) * 1e-2
    with pytest.raises(ValueError, match="mixed_e"):
        dfm_loss(out, d, d, DFMLossConfig(lambda_lap=0.0, lambda_invariance=1.0))
    mixed = (out["w_e"][:, K:].detach() + 0.01).requires_grad_()  # expression halves moved by 0.01 (x scale 300 = 3)
    total, parts = dfm_loss(out | {"mixed_e": mixed}, d, d, DFMLossConfig(lambda_lap=0.0, lambda_invariance=2.0))
    assert parts["invariance"] == pytest.approx(9.0, rel=1e-4)
    total.backward()
    assert mixed.grad.abs().min() > 0 and out["w_e"].grad[:, K:].abs().max() == 0  # the clean pass is only the target


def test_speech_upper_face_loss_is_the_upper_share_of_speech_blendshapes():
    from blendtalk.training.losses import speech_upper_face_loss

    upper = torch.tensor([True, True, False, False, False, False])
    b = torch.zeros(V, 3, 4)  # (V, 3, K_s + K_e) with K_s = 2
    b[0, 0, 0] = 1.0  # speech blendshape 0: all on the upper face
    b[3, 1, 1] = 1.0  # speech blendshape 1: none
    b[1, 2, 2:] = 5.0  # expression blendshapes on the upper face do not count
    blendshapes = b.reshape(3 * V, 4)
    assert float(speech_upper_face_loss(blendshapes, 2, upper)) == pytest.approx(0.5)
    b[2, 0, 1] = b[1, 0, 1] = 1.0  # blendshape 1: one more lower vertex and one upper: a third on the upper face
    assert float(speech_upper_face_loss(b.reshape(3 * V, 4), 2, upper)) == pytest.approx((1.0 + 1 / 3) / 2)
    with pytest.raises(ValueError, match="V\\*3"):
        speech_upper_face_loss(blendshapes[:-3], 2, upper)
    out = fake_outputs(k_e=2) | {"blendshapes": torch.randn(3 * V, K + 2)}
    d = torch.randn(4, V, 3) * 1e-2
    with pytest.raises(ValueError, match="upper_face"):
        dfm_loss(out, d, d, DFMLossConfig(lambda_lap=0.0, lambda_speech_upper=1.0))
    _, parts = dfm_loss(out, d, d, DFMLossConfig(lambda_lap=0.0, lambda_speech_upper=1.0), upper_mask=upper)
    assert parts["speech_upper"] == pytest.approx(float(speech_upper_face_loss(out["blendshapes"], K, upper)))  # K_s columns
