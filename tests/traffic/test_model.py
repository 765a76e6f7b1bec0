"""Every variant of the spec builds, runs with the right output shape, and has the expected size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.traffic.config import load_config
from training.traffic.model import TrafficForecaster, TrafficModelConfig, count_parameters

N, B = 6, 2
SMALL = {"d_model": 16, "num_heads": 2, "dropout": 0.0}

VARIANTS = {
    "phase1": {},
    "phase2_shared": {"share_stage_params": True},
    "phase2_skip_add": {"skip_connections": "add"},
    "phase2_skip_concat": {"skip_connections": "concat"},
    "phase2_batched_spatial": {"spatial_encoding": "batched"},
    "phase3_quick_like": {"num_stages": 3, "patch_sizes": [1, 2, 4], "cross_stage_attention": True,
                          "deep_supervision": True},
    "phase3_deep_like": {"num_stages": 5, "patch_sizes": [1, 2, 4, 8], "cross_stage_attention": True,
                         "deep_supervision": True},
    "phase3_node_scope": {"num_stages": 3, "cross_stage_attention": True, "cross_stage_scope": "node"},
    "single_stage": {"num_stages": 1},
    "residual_day_of_week": {"predict_residual": True, "use_day_of_week": True},
}


def _inputs(cfg: TrafficModelConfig, batch: int = B) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.in_steps, cfg.num_nodes, cfg.input_dim, generator=g)
    x[..., 1:] = torch.rand(batch, cfg.in_steps, cfg.num_nodes, cfg.input_dim - 1, generator=g)
    return x


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_output_shape_and_gradients(name: str) -> None:
    cfg = TrafficModelConfig(num_nodes=N, **{**SMALL, **VARIANTS[name]})
    torch.manual_seed(0)
    model = TrafficForecaster(cfg, np.eye(N), scaler_mean=50.0, scaler_std=10.0)
    outputs = model.forward_all(_inputs(cfg))
    expected = cfg.num_stages if cfg.deep_supervision else 1  # deep supervision: one prediction per stage
    assert len(outputs) == expected
    for out in outputs:
        assert out.shape == (B, 12, N, 1)
        assert torch.isfinite(out).all()
    model.eval()
    assert torch.allclose(model(_inputs(cfg)), model.forward_all(_inputs(cfg))[-1])
    sum(o.mean() for o in outputs).backward()
    assert all(p.grad is not None for p in model.parameters())  # every parameter is on the loss path


def _count(**overrides: object) -> int:
    return count_parameters(TrafficForecaster(TrafficModelConfig(num_nodes=N, **{**SMALL, **overrides})))


def test_parameter_counts_of_the_switches() -> None:
    base = _count()
    d, h = SMALL["d_model"], SMALL["num_heads"]
    # Phase 1 by hand: embedding (value, 288 time-of-day slots, N nodes, 12 positions); per stage a temporal
    # and a spatial transformer layer (2 norms, q/k/v/out, 4x FFN = 12d^2 + 13d each, + h adjacency weights)
    # and the gated fusion (2d^2 + 3d); one decoder (12x12 time map, d x d spatial map, positions, norm); head.
    layer = 12 * d * d + 13 * d
    stage = 2 * layer + h + 2 * d * d + 3 * d
    decoder = (12 * 12 + 12) + (d * d + d) + 12 * d + 2 * d
    assert base == 2 * d + 288 * d + N * d + 12 * d + 2 * stage + decoder + (d + 1)
    assert _count(spatial_encoding="batched") == base  # same weights, different token set
    assert _count(skip_connections="add") == base + 1  # one gate per earlier stage (stage 2 has one)
    assert _count(skip_connections="concat") == base + 2 * (2 * d * d + d)  # projection + gate from [h, h1]
    shared = _count(share_stage_params=True)
    assert 0.35 < 1 - shared / base < 0.6  # the log: about -40% parameters
    patches = _count(patch_sizes=[1, 2])
    assert patches - base == 2 * ((d * d + d) + (2 * d * d + d) + (2 * d * d + d) + 2 * d)  # per stage
    cross = _count(cross_stage_attention=True)
    assert cross - base == 4 * (d * d + d) + 4 * d  # one attention (q, k, v, out) + two norms for stage 2
    assert _count(num_stages=3) > base and _count(deep_supervision=True) == base + (d + 1)


@pytest.mark.parametrize(("preset", "low", "high"), [("fallback", 1.1e6, 1.35e6), ("quick", 2.0e6, 2.5e6),
                                                     ("deep", 5e6, 9e6)])
def test_presets_match_the_log_sizes_at_metr_la_scale(preset: str, low: float, high: float) -> None:
    """Phase 1 / fallback ~1.23M, Phase 3 quick ~2.3M parameters at N=207 (the log's figures)."""
    cfg = load_config(preset).for_data(207, use_time_of_day=True, use_day_of_week=False)
    assert low < count_parameters(TrafficForecaster(cfg)) < high
    if preset == "fallback":  # fallback == Phase 1: 2 stages, [1], no cross-stage attention
        assert cfg.num_stages == 2 and cfg.patch_sizes == [1] and not cfg.cross_stage_attention


def test_residual_mode_starts_from_the_last_observed_reading() -> None:
    cfg = TrafficModelConfig(num_nodes=N, predict_residual=True, **SMALL)
    model = TrafficForecaster(cfg, None, scaler_mean=50.0, scaler_std=10.0).eval()
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)
    speeds = torch.full((1, 12, N), 30.0)
    speeds[0, -1, 0] = 0.0  # newest reading of sensor 0 missing -> the one before (30 -> 42 below)
    speeds[0, -2, 0] = 42.0
    speeds[0, :, 1] = 0.0  # sensor 1 never observed -> the scaler mean
    x = torch.stack([(speeds - 50.0) / 10.0, torch.zeros_like(speeds)], dim=-1)
    y = model(x)[0, :, :, 0]
    assert torch.allclose(y[:, 0], torch.tensor(42.0)) and torch.allclose(y[:, 1], torch.tensor(50.0))
    assert torch.allclose(y[:, 2:], torch.tensor(30.0))


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="skip_connections"):
        TrafficModelConfig(num_nodes=N, skip_connections="sum")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_heads"):
        TrafficModelConfig(num_nodes=N, d_model=10, num_heads=4)
    with pytest.raises(ValueError, match="unknown model config"):
        TrafficModelConfig.from_dict({"num_nodes": N, "stages": 3})
    with pytest.raises(ValueError, match="adjacency"):
        TrafficForecaster(TrafficModelConfig(num_nodes=N), np.eye(N + 1))


@pytest.mark.parametrize("name", ["phase3_deep_like", "phase2_batched_spatial", "residual_day_of_week"])
def test_variants_export_to_onnx_with_a_dynamic_batch_axis(name: str, tmp_path) -> None:
    """Padding (patch 8 on 12 steps), interpolation, full-scope cross-stage attention, the residual path and
    day-of-week embeddings all survive ONNX export: parity at batch 1 and 3 through export.core.publish."""
    from export.core import ExportPlan, GraphExport, publish
    from families.manifest import Manifest

    cfg = TrafficModelConfig(num_nodes=N, **{**SMALL, **VARIANTS[name]})
    torch.manual_seed(0)
    model = TrafficForecaster(cfg, np.eye(N), scaler_mean=50.0, scaler_std=10.0).eval()
    samples = [{"x": _inputs(cfg, batch)} for batch in (1, 3)]
    graph = GraphExport(name="model", module=model, samples=samples, output_names=["y"], atol=2e-3, rtol=1e-4)
    version_dir = publish(ExportPlan(family="traffic", task="traffic-forecast", graphs=[graph]), tmp_path, "t")
    spec = Manifest.read(version_dir).primary
    assert spec.parity is not None and spec.parity.passed and spec.parity.batch_sizes == [1, 3]
    assert spec.inputs[0].shape == [-1, 12, N, cfg.input_dim]


@pytest.mark.parametrize(("chunks", "steps"), [(6, 12), (3, 12), (2, 12), (1, 12), (5, 7)])
def test_patch_upsampling_matrix_equals_linear_interpolation(chunks: int, steps: int) -> None:
    """The multi-scale patches upsample with a matmul (fast backward on GPU); it must be the same map as
    F.interpolate(mode="linear", align_corners=False)."""
    from training.traffic.model import linear_upsampling

    y = torch.randn(3, 4, chunks, 5)  # (B, N, chunks, D)
    reference = torch.nn.functional.interpolate(y.reshape(-1, chunks, 5).transpose(1, 2), size=steps,
                                                mode="linear", align_corners=False)
    reference = reference.transpose(1, 2).reshape(3, 4, steps, 5)
    torch.testing.assert_close(linear_upsampling(chunks, steps) @ y, reference)
