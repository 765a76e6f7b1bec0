"""Model structure: visible-only encoders, CrossMAE decoders, WeightedFeatureMaps, partial reconstruction."""

from __future__ import annotations

import pytest
import torch

from families.water.preprocessing import IMAGE_MODALITIES, MODALITIES, VECTOR_MODALITIES
from training.water.config import fast_model, full_model
from training.water.model import (
    DenseReconstructor,
    WaterMAE,
    count_parameters,
    loss_terms,
    patchify,
    select,
    take,
    to_tokens,
    unpatchify,
)

SWITCHES = [
    {},
    {"decoder_self_attn": True},
    {"use_weighted_fm": True},
    {"use_weighted_fm": True, "use_input": True, "use_fm_layers": [0]},
    {"use_cross_attn": False},
    {"prior_fill": False},
    {"prior_fill": False, "use_cross_attn": False},
]


def _randomise_heads(model: WaterMAE) -> None:
    """prior_fill starts the output heads at zero (output = prior); give them weights so tests see the decoder."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for decoder in model.decoders.values():
            decoder.head.weight.copy_(torch.randn(decoder.head.weight.shape, generator=g) * 0.1)


def _batch(cfg, b: int, ratio: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hp, wp = cfg.grid_patches
    fields = {m: torch.randn(b, cfg.frames, cfg.height, cfg.width, generator=g) for m in IMAGE_MODALITIES}
    fields.update({m: torch.randn(b, cfg.series_len, generator=g) for m in VECTOR_MODALITIES})
    masks = {m: torch.rand(b, cfg.frames, hp, wp, generator=g) < ratio for m in IMAGE_MODALITIES}
    masks.update({m: torch.rand(b, cfg.series_len, generator=g) < ratio for m in VECTOR_MODALITIES})
    return fields, torch.randn(b, cfg.n_static, generator=g), masks


@pytest.mark.parametrize("switches", SWITCHES, ids=lambda s: ",".join(s) or "default")
def test_masked_dense_graph_equals_visible_only_encoding(switches: dict) -> None:
    """The exported form (all tokens + attention masks) computes exactly what encoding only the visible
    tokens (gathered, variable counts padded) computes, and copies visible tokens unchanged."""
    torch.manual_seed(0)
    cfg = fast_model(**switches)
    model = WaterMAE(cfg).eval()
    _randomise_heads(model)
    fields, static, masks = _batch(cfg, 4, 0.6)
    with torch.no_grad():
        dense = DenseReconstructor(model)(*[fields[m] for m in MODALITIES], static, *[masks[m] for m in MODALITIES])
        tokens = to_tokens(cfg, fields)
        hidden = {m: masks[m].reshape(4, -1) for m in MODALITIES}
        vis = {m: select(~hidden[m]) for m in MODALITIES}
        query = {m: select(hidden[m]) for m in MODALITIES}
        assert len({int((~vis["precip"][1]).sum(1)[i]) for i in range(4)}) > 1  # visible counts differ
        pred = model(tokens, static, {m: v[0] for m, v in vis.items()}, {m: v[1] for m, v in vis.items()},
                     {m: q[0] for m, q in query.items()}, {m: q[1] for m, q in query.items()})
    for out, m in zip(dense, MODALITIES, strict=True):
        out_tokens = patchify(out, cfg.patch) if m in IMAGE_MODALITIES else out[:, :, None]
        got = take(out_tokens, query[m][0])[~query[m][1]]
        torch.testing.assert_close(got, pred[m][~query[m][1]], atol=2e-5, rtol=1e-4)
        visible = take(out_tokens, vis[m][0])[~vis[m][1]]
        assert torch.equal(visible, take(tokens[m], vis[m][0])[~vis[m][1]])


def test_hidden_input_values_are_ignored() -> None:
    cfg = fast_model(prior_fill=False)
    model = DenseReconstructor(WaterMAE(cfg).eval())
    fields, static, masks = _batch(cfg, 2, 0.75)
    noisy = {m: torch.where(model._value_mask(m, masks[m]), fields[m] * 100 + 7, fields[m]) for m in MODALITIES}
    with torch.no_grad():
        a = model(*[fields[m] for m in MODALITIES], static, *[masks[m] for m in MODALITIES])
        b = model(*[noisy[m] for m in MODALITIES], static, *[masks[m] for m in MODALITIES])
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y)


def test_prior_fill_starts_at_the_prior_and_corrects_it() -> None:
    """With prior_fill the hidden input values are the prior: an untrained model returns it unchanged (zero
    heads), and once the heads are non-zero the output is the prior plus a correction that depends on it."""
    cfg = fast_model(prior_fill=True)
    mae = WaterMAE(cfg).eval()
    model = DenseReconstructor(mae)
    fields, static, masks = _batch(cfg, 2, 0.75)
    with torch.no_grad():
        out = model(*[fields[m] for m in MODALITIES], static, *[masks[m] for m in MODALITIES])
        for x, m in zip(out, MODALITIES, strict=True):
            torch.testing.assert_close(x, fields[m])
        _randomise_heads(mae)
        shifted = {m: torch.where(model._value_mask(m, masks[m]), fields[m] + 1.0, fields[m]) for m in MODALITIES}
        a = model(*[fields[m] for m in MODALITIES], static, *[masks[m] for m in MODALITIES])
        b = model(*[shifted[m] for m in MODALITIES], static, *[masks[m] for m in MODALITIES])
    for x, y, m in zip(a, b, MODALITIES, strict=True):
        hidden = model._value_mask(m, masks[m])
        assert not torch.allclose(x[hidden], fields[m][hidden])  # a correction is applied
        assert not torch.allclose(x[hidden], y[hidden])  # and it starts from the prior it was given
        assert torch.equal(x[~hidden], y[~hidden])


def test_fully_hidden_modality_gives_finite_output() -> None:
    cfg = fast_model()
    model = DenseReconstructor(WaterMAE(cfg).eval())
    fields, static, masks = _batch(cfg, 2, 0.5)
    masks["soil"][:] = True
    masks["evap"][:] = True
    with torch.no_grad():
        outs = model(*[fields[m] for m in MODALITIES], static, *[masks[m] for m in MODALITIES])
    assert all(torch.isfinite(o).all() for o in outs)


def test_vector_encoders_add_one_static_token() -> None:
    cfg = fast_model()
    model = WaterMAE(cfg)
    b, n_vis = 3, 7
    idx = torch.arange(n_vis)[None].expand(b, -1)
    pad = torch.zeros(b, n_vis, dtype=torch.bool)
    _, seq, pad_out = model.encoders["evap"](torch.randn(b, cfg.series_len, 1), torch.randn(b, cfg.n_static), idx, pad)
    assert seq.shape == (b, n_vis + 1, cfg.d_model) and not pad_out[:, 0].any()
    _, seq, _ = model.encoders["precip"](torch.randn(b, cfg.image_tokens, cfg.patch**2), torch.randn(b, 11),
                                         idx, pad)
    assert seq.shape == (b, n_vis, cfg.d_model)  # sequence output, not a pooled token


def test_full_config_parameter_counts() -> None:
    model = WaterMAE(full_model())
    total = count_parameters(model)
    assert 24.8e6 < total < 26.0e6, total  # spec: ~25.6M
    assert 0.9e6 < count_parameters(model.decoders["precip"]) < 1.05e6  # spec: image decoder ~1.0M
    assert 0.88e6 < count_parameters(model.decoders["evap"]) < 0.96e6  # spec: vector decoder ~0.92M
    wfm = WaterMAE(full_model(use_weighted_fm=True))
    assert wfm.wfm is not None
    assert wfm.wfm["precip"].linear.weight.numel() == 24 and wfm.wfm["riverflow"].linear.weight.numel() == 16
    assert 8_000 < count_parameters(wfm) - total < 12_000  # spec: ~10K


def test_fm_layer_selection_and_input_layer() -> None:
    model = WaterMAE(fast_model(use_weighted_fm=True, use_fm_layers=[1], use_input=True))
    assert model.fm_layers("precip") == [0, 2]
    assert model.wfm is not None and model.wfm["precip"].linear.weight.shape == (2, 2)


def test_partial_reconstruction_scores_a_fraction_of_hidden_tokens() -> None:
    mask = torch.zeros(3, 40, dtype=torch.bool)
    mask[0, :30] = True
    mask[1, 10:20] = True
    idx, pad = select(mask, keep=0.5, generator=torch.Generator().manual_seed(0))
    counts = (~pad).sum(1).tolist()
    assert counts == [15, 5, 0]
    for row in range(3):
        chosen = idx[row][~pad[row]]
        assert mask[row, chosen].all() and len(set(chosen.tolist())) == len(chosen)


def test_losses_are_per_modality_and_train() -> None:
    torch.manual_seed(0)
    cfg = fast_model(kept_mask_ratio=0.5)
    model = WaterMAE(cfg)
    fields, static, masks = _batch(cfg, 4, 0.75)
    tokens = to_tokens(cfg, fields)
    hidden = {m: masks[m].reshape(4, -1) for m in MODALITIES}
    prior = {m: torch.where(hidden[m][:, :, None], 0.0, tokens[m]) for m in MODALITIES}  # a mean-fill prior
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    first = None
    for _ in range(15):
        losses = loss_terms(model, prior, static, hidden, targets=tokens)
        assert set(losses) == set(MODALITIES)
        total = sum(losses.values())
        first = float(total) if first is None else first
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert float(total) < first


def test_patchify_roundtrip() -> None:
    x = torch.randn(2, 5, 20, 30)
    assert torch.equal(unpatchify(patchify(x, 10), 5, 20, 30, 10), x)
    assert torch.equal(patchify(x, 10)[0, 1], x[0, 0, :10, 10:20].reshape(-1))
