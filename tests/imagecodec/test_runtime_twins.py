"""The codec across runtimes of one version: ONNX Runtime and the TorchScript twins export writes beside the
ONNX graphs (what serves on CUDA where onnxruntime has no CUDA provider). A stream written by either decodes
on the other to the same latent symbols (the scale-table index hints keep the entropy parameters exact)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from families.imagecodec.codec import decode, encode
from families.manifest import Manifest
from service.runtimes import choose_format
from tests.fixtures.imagecodec import local_codec, smooth_image

SIZES = [(64, 64), (37, 101), (130, 67)]


def test_every_codec_graph_has_a_parity_checked_twin(imagecodec_repository: Path) -> None:
    version_dir = imagecodec_repository / "imagecodec" / "1"
    manifest = Manifest.read(version_dir)
    for name, graph in manifest.graphs.items():
        assert graph.format == "onnx"
        twin = graph.torchscript
        assert twin is not None, f"{name}: no TorchScript twin ({manifest.provenance.get('torchscript_missing')})"
        assert twin.parity.passed and twin.parity.max_abs_err <= twin.parity.atol, name
        assert twin.file in manifest.files and (version_dir / twin.file).is_file()
        assert choose_format(graph, "cpu", "torch") == "torchscript"
        assert choose_format(graph, "cpu", "auto") == "onnx"  # CPU serving stays on ONNX Runtime


@pytest.mark.parametrize(("writer", "reader"), [("onnx", "torch"), ("torch", "onnx")])
def test_a_stream_decodes_bit_exactly_on_the_other_runtime(imagecodec_repository: Path, writer: str,
                                                            reader: str) -> None:
    version_dir = imagecodec_repository / "imagecodec" / "1"
    nets_w, model = local_codec(version_dir, runtime=writer)
    nets_r, _ = local_codec(version_dir, runtime=reader)
    for i, (h, w) in enumerate(SIZES):
        image = smooth_image(h, w, 10 + i)
        stream, enc_info = encode(image, nets_w, model)
        same, same_info = decode(stream, nets_w, model)
        other, other_info = decode(stream, nets_r, model)
        # The latent is exact across runtimes; the synthesis sees the same latent, so pixels agree to float
        # rounding (a value at .5 may round either way).
        np.testing.assert_array_equal(other_info.symbols, enc_info.symbols)
        np.testing.assert_array_equal(same_info.symbols, enc_info.symbols)
        assert other.shape == image.shape
        assert np.abs(other.astype(int) - same.astype(int)).max() <= 1
