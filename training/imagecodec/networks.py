"""Eager adapters: the trained model as the codec procedure's `Networks`, and its CodecModel."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from families.imagecodec.codec import GRAPH_INPUTS, GRAPH_OUTPUTS, CodecModel
from families.imagecodec.contract import level_hash
from families.imagecodec.tables import PmfTables
from training.imagecodec.model import ImageCodec, state_hash


def graph_modules(model: ImageCodec) -> dict[str, nn.Module]:
    """The graphs the codec runs, by name (the same modules export writes)."""
    graphs: dict[str, nn.Module] = {
        "g_a": model.g_a, "h_a": model.h_a, "h_s": model.h_s, "g_s": model.g_s, "ctx_init": model.context.init,
    }
    for k, step in enumerate(model.context.steps, start=2):
        graphs[f"step_{k}"] = step
    return graphs


class TorchNetworks:
    """The model's graphs run eagerly on `device` (numpy in and out, as the codec procedure expects)."""

    def __init__(self, model: ImageCodec, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.modules = graph_modules(model.eval().to(self.device))

    def __call__(self, graph: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [torch.from_numpy(inputs[name]).to(self.device) for name in GRAPH_INPUTS[graph]]
        with torch.inference_mode():
            out = self.modules[graph](*args)
        out = (out,) if isinstance(out, torch.Tensor) else out
        return {name: t.cpu().numpy() for name, t in zip(GRAPH_OUTPUTS[graph], out, strict=True)}


def build_tables(model: ImageCodec) -> PmfTables:
    with torch.no_grad():
        return PmfTables.build(model.z_mean.numpy(), model.z_scale().numpy())


def codec_model(model: ImageCodec, name: str, tables: PmfTables | None = None,
                step: float | tuple[float, ...] = 1.0) -> CodecModel:
    """The procedure's model of `model` coding y with quantisation step `step` (1: the trained point; or one
    step per latent channel, a trained level of a variable-rate model)."""
    tables = tables or build_tables(model)
    return CodecModel(name=name, model_hash=level_hash(bytes.fromhex(state_hash(model)[:16]), step), M=model.cfg.M,
                      N=model.cfg.N, tables=tables, step=step)
