"""The chunked WKV scan (issue 15 item 5) against the doubling scan it replaced and naive references, and its
exported graphs (ONNX Runtime with dynamic H, W; TorchScript scripted and traced)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from training.imagecodec import layers
from training.imagecodec.layers import (
    RWKVCell,
    _chunk_len,
    bidirectional_wkv,
    bidirectional_wkv_doubling,
    decay_scan,
    doubling_scan,
)

SIZES = (1, 2, 15, 16, 17, 255, 1000, 4096 + 3)
# Strong decay (rho = 1e-6) to weak decay (rho = 1 - 1e-6), per channel.
LOG_RHO = torch.tensor([-13.8155, -5.0, -1.0, -0.1, -1e-3, -1e-6]).unsqueeze(-1)


def _recurrence(b: torch.Tensor, log_rho: torch.Tensor, forward: bool) -> torch.Tensor:
    """s_t = rho * s_{t-1} + b_t one step at a time, in float64."""
    rho = torch.exp(log_rho.double()).squeeze(-1)
    x = b.double() if forward else b.double().flip(-1)
    out = torch.empty_like(x)
    s = torch.zeros_like(x[..., 0])
    for t in range(x.shape[-1]):
        s = rho * s + x[..., t]
        out[..., t] = s
    return out if forward else out.flip(-1)


def _quadratic(b: torch.Tensor, log_rho: torch.Tensor, forward: bool) -> torch.Tensor:
    """sum_i rho**(t - i) b_i over i <= t (forward) or i >= t, as an N x N matrix, in float64."""
    t = torch.arange(b.shape[-1])
    d = t[:, None] - t[None, :] if forward else t[None, :] - t[:, None]
    weights = torch.exp(log_rho.double()[:, :, None] * d.clamp(min=0)) * (d >= 0)
    return torch.einsum("cti,bci->bct", weights, b.double())


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("forward", [True, False])
def test_chunked_scan_matches_references(n: int, forward: bool) -> None:
    torch.manual_seed(n)
    b = torch.randn(2, LOG_RHO.shape[0], n)
    got = decay_scan(b, LOG_RHO, forward)
    assert torch.isfinite(got).all()
    exact = _recurrence(b, LOG_RHO, forward)
    tol = 2e-6 * (1.0 + exact.abs().max().item())
    torch.testing.assert_close(got.double(), exact, atol=tol, rtol=0)
    torch.testing.assert_close(got, doubling_scan(b, LOG_RHO, forward), atol=tol, rtol=0)
    if n <= 1000:
        torch.testing.assert_close(got.double(), _quadratic(b, LOG_RHO, forward), atol=tol, rtol=0)


@pytest.mark.parametrize("chunk", [1, 7, 16, 64])
def test_chunk_length_does_not_change_the_result(chunk: int) -> None:
    torch.manual_seed(1)
    b = torch.randn(1, LOG_RHO.shape[0], 300)
    for forward in (True, False):
        torch.testing.assert_close(decay_scan(b, LOG_RHO, forward, chunk=chunk), decay_scan(b, LOG_RHO, forward),
                                   atol=2e-5, rtol=1e-5)


def test_chunk_length_follows_the_size() -> None:
    sizes = (1, 96, 830, 840, 1536, 6600, 6700, 16384, 1 << 17, 1 << 22)
    assert [_chunk_len(n) for n in sizes] == [16, 16, 16, 32, 32, 32, 48, 48, 96, 256]


@pytest.mark.parametrize("n", SIZES)
def test_bidirectional_wkv_matches_doubling_and_definition(n: int) -> None:
    torch.manual_seed(n)
    c = LOG_RHO.shape[0]
    k, v = 3 * torch.randn(1, c, n), torch.randn(1, c, n)
    w, u = -LOG_RHO.squeeze(-1), torch.randn(c)
    got = bidirectional_wkv(k, v, w, u)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, bidirectional_wkv_doubling(k, v, w, u), atol=1e-5, rtol=1e-4)
    if n <= 1000:
        t = torch.arange(n)
        dist = (t[:, None] - t[None, :]).abs().double()
        kk = k.clamp(-15, 15).double()
        for ch in range(c):
            weights = torch.exp(-(dist - 1) * w[ch].double() + kk[0, ch][None, :])
            weights.fill_diagonal_(0)
            weights = weights + torch.diag(torch.exp(u[ch].double() + kk[0, ch]))
            want = (weights @ v[0, ch].double()) / weights.sum(1)
            torch.testing.assert_close(got[0, ch].double(), want, atol=1e-5, rtol=1e-4)


def test_extreme_keys_stay_finite() -> None:
    k = torch.tensor([[[40.0, -40.0, 15.0, -15.0] * 300]]).expand(1, 6, -1).contiguous()
    v = torch.randn(1, 6, 1200)
    out = bidirectional_wkv(k, v, -LOG_RHO.squeeze(-1), torch.full((6,), 10.0))
    assert torch.isfinite(out).all()


def _onnx(cell: torch.nn.Module) -> bytes:
    x = torch.randn(1, 16, 8, 12)
    buffer = io.BytesIO()
    axes = {name: {2: "H", 3: "W"} for name in ("x", "h", "out")}
    torch.onnx.export(cell, (x, x.clone()), buffer, input_names=["x", "h"], output_names=["out"], dynamic_axes=axes,
                      opset_version=18, dynamo=False, do_constant_folding=True)
    return buffer.getvalue()


def test_onnx_export_dynamic_sizes_and_smaller_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    cell = RWKVCell(16, 2).eval()
    data = _onnx(cell)
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    for h, w in ((8, 12), (24, 40), (64, 64)):  # 96, 960, 4096 tokens: chunks of 16, 32, 64
        x, hp = torch.randn(1, 16, h, w), torch.randn(1, 16, h, w)
        with torch.no_grad():
            want = cell(x, hp).numpy()
        got = session.run(None, {"x": x.numpy(), "h": hp.numpy()})[0]
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)
    monkeypatch.setattr(layers, "bidirectional_wkv", bidirectional_wkv_doubling)
    doubling_nodes = len(onnx.load_from_string(_onnx(cell)).graph.node)
    assert len(model.graph.node) < doubling_nodes  # no 17-level loop


def test_torchscript_script_and_trace_follow_the_size() -> None:
    torch.manual_seed(0)
    cell = RWKVCell(16, 2).eval()
    scripted = torch.jit.freeze(torch.jit.script(cell))
    sample = (torch.randn(1, 16, 8, 12), torch.randn(1, 16, 8, 12))
    traced = torch.jit.trace(cell, sample, check_trace=False)
    for h, w in ((8, 12), (40, 50)):
        x, hp = torch.randn(1, 16, h, w), torch.randn(1, 16, h, w)
        with torch.no_grad():
            want = cell(x, hp)
            torch.testing.assert_close(scripted(x, hp), want, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(traced(x, hp), want, atol=1e-5, rtol=1e-5)
