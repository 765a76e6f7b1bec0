"""Codec building blocks: schedule, WKV, bitstream container, and the scale-hint mechanism that keeps
decoding exact when the decoder's networks differ from the encoder's by float noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from families.imagecodec import codec
from families.imagecodec.bitstream import Bitstream, BitstreamError
from families.imagecodec.schedule import NUM_STEPS, STEP_FACTOR, step_map
from training.imagecodec.config import tiny_config
from training.imagecodec.layers import bidirectional_wkv
from training.imagecodec.model import ImageCodec
from training.imagecodec.networks import TorchNetworks, codec_model


def test_schedule_partitions_latent_into_nested_scales() -> None:
    smap = step_map(16, 16, 12)
    counts = np.bincount(smap.ravel(), minlength=NUM_STEPS)
    assert counts.sum() == 16 * 16 * 12 and (counts > 0).all()
    for k in range(NUM_STEPS):  # each step only touches its scale's lattice
        f = STEP_FACTOR[k]
        c, i, j = np.nonzero(smap == k)
        assert (i % f == 0).all() and (j % f == 0).all()
    assert not np.array_equal(smap[0], smap[-1])  # channel groups use different position patterns


def test_wkv_matches_quadratic_definition() -> None:
    torch.manual_seed(0)
    n = 50
    k, v = torch.randn(1, 4, n), torch.randn(1, 4, n)
    w, u = torch.rand(4) * 2 + 0.01, torch.randn(4)
    got = bidirectional_wkv(k, v, w, u)
    t = torch.arange(n)
    dist = (t[:, None] - t[None, :]).abs().float()
    for c in range(4):
        weights = torch.exp(-(dist - 1) * w[c] + k[0, c][None, :])
        weights.fill_diagonal_(0)
        weights = weights + torch.diag(torch.exp(u[c] + k[0, c]))
        torch.testing.assert_close(got[0, c], (weights @ v[0, c]) / weights.sum(1), atol=1e-5, rtol=1e-4)


def test_bitstream_container_rejects_damage() -> None:
    stream = Bitstream("m", b"12345678", 10, 20, z=b"zz", y=b"yyyy", escapes=b"", hints=b"h")
    data = stream.to_bytes()
    assert Bitstream.parse(data).y == b"yyyy"
    for bad, kind in ((data[:-1], "truncated"), (data + b"x", "corrupted"), (b"JUNK" + data[4:], "corrupted"),
                      (data[:4] + b"\x07" + data[5:], "version")):
        with pytest.raises(BitstreamError) as err:
            Bitstream.parse(bad)
        assert err.value.kind == kind
    flipped = bytearray(data)
    flipped[-6] ^= 1
    with pytest.raises(BitstreamError, match="checksum"):
        Bitstream.parse(bytes(flipped))


class _NoisyNetworks(TorchNetworks):
    """A stand-in for 'another runtime': same graphs, outputs perturbed by relative float noise."""

    def __init__(self, model, scale: float) -> None:
        super().__init__(model)
        self.rng = np.random.default_rng(1)
        self.scale = scale

    def __call__(self, graph, inputs):
        out = super().__call__(graph, inputs)
        return {k: v * (1 + self.rng.uniform(-self.scale, self.scale, v.shape)).astype(np.float32)
                for k, v in out.items()}


def test_scale_hints_make_decoding_exact_under_runtime_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = ImageCodec(tiny_config()).eval()
    with torch.no_grad():
        model.h_s.net[-1].bias[: model.cfg.M].uniform_(-1.0, 3.0)
    cm = codec_model(model, "t")
    image = (np.random.default_rng(0).random((128, 192, 3)) * 255).astype(np.uint8)
    data, enc = codec.encode(image, TorchNetworks(model), cm)
    _, dec = codec.decode(data, _NoisyNetworks(model, 1e-6), cm)
    np.testing.assert_array_equal(dec.symbols, enc.symbols)
    # Without hints (margin 0) the same noise flips table indices and the decoded latent diverges.
    monkeypatch.setattr(codec, "HINT_MARGIN", 0.0)
    data0, enc0 = codec.encode(image, TorchNetworks(model), cm)
    assert enc0.hints == 0 and len(data0) <= len(data)
    _, dec0 = codec.decode(data0, _NoisyNetworks(model, 3e-3), cm)
    assert not np.array_equal(dec0.symbols, enc0.symbols)
