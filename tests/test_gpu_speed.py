"""eval/gpu_speed.py's own arithmetic, on the CPU: the CUDA-graph stand-in for the sparse map draws
the same map, and the FLOP count is the convolutions' own."""

import torch

from blendtalk.models.dfm import DeformationFusionModule, DFMConfig
from blendtalk.face.geometry import load_square_map
from eval.gpu_speed import count_flops, dfm_inputs, gather_map


def test_gather_map_draws_the_sparse_map(rig):
    config = DFMConfig(num_vertices=rig.num_vertices, num_blendshapes=4, map_size=32, channels=(8, 8, 8, 8))
    torch.manual_seed(0)
    dfm = DeformationFusionModule(config, load_square_map(rig, 32).matrix()).eval()
    d_s, d_e = dfm_inputs(rig, 3, torch.device("cpu"))
    with torch.inference_mode():
        expected = dfm.geometry_map(d_s)
        got = gather_map(dfm, rig)(d_s)
    assert got.shape == expected.shape == (3, 3, 32, 32)
    torch.testing.assert_close(got, expected, atol=1e-9, rtol=1e-5)


def test_flops_are_the_convolutions_and_the_heads(rig):
    config = DFMConfig(num_vertices=rig.num_vertices, num_blendshapes=4, map_size=32, channels=(8, 16, 16, 16))
    dfm = DeformationFusionModule(config, load_square_map(rig, 32).matrix()).eval()
    counts = count_flops(dfm)
    conv, side, c_in = 0, 32, 3
    for c_out in config.channels:  # every block halves the side here (32 -> 2)
        side //= 2
        conv += 2 * side * side * c_out * c_in * 3 * 3
        c_in = c_out
    assert counts["conv_flops"] == 2 * conv  # two encoders
    assert counts["linear_flops"] == 2 * 2 * (16 * 2 * 2) * config.k_total
    assert counts["total_flops"] > counts["conv_flops"]
