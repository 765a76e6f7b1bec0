"""The image codec plug-in: per loaded version the parsed manifest, the coding procedure's model with the
shipped pmf tables, the quality recorder, and the two procedure queues the routes submit to.

The coding loop runs many small graphs one after the other (g_a, h_a, h_s, ctx_init, step_2 .. step_11,
g_s), so it is not a batched graph call but a procedure: `compress` and `decompress` run on the version's
worker thread, one image at a time, calling its runtimes directly.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from families.imagecodec.bitstream import BitstreamError
from families.imagecodec.codec import PreparedStream, decode, encode
from families.imagecodec.contract import COMPRESS_PROCEDURE, DECOMPRESS_PROCEDURE, TABLES_ASSET, Preprocessing
from families.imagecodec.tables import PmfTables
from service.errors import BadRequest
from service.families.imagecodec import SPEC
from service.families.imagecodec.quality import CodecQuality
from service.families.imagecodec.routes import CodecState, png, router, stream_error
from service.plugin import FamilyPlugin

if TYPE_CHECKING:
    from service.models.version import LoadedVersion


class VersionNetworks:
    """The codec procedure's `Networks` over a loaded version's runtimes (direct, unbatched)."""

    def __init__(self, version: LoadedVersion) -> None:
        self.version = version

    def __call__(self, graph: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.version.runtimes[graph].run(inputs)


def compress_batch(nets: VersionNetworks, state: CodecState, payloads: list[np.ndarray]) -> list[Any]:
    """The compress procedure: (stream, info) per image; bpp recorded, and on a sampled share the PSNR of
    what was written, decoded in the same job."""
    results = []
    for image in payloads:
        stream, info = encode(image, nets, state.model)
        state.quality.record(image, stream, info, nets, state.model)
        results.append((stream, info))
    return results


def decompress_batch(nets: VersionNetworks, state: CodecState, payloads: list[PreparedStream]) -> list[Any]:
    """The decompress procedure: the PNG per checked stream, or the error of a stream that is still bad."""
    results: list[Any] = []
    for prepared in payloads:
        try:
            image, _ = decode(prepared, nets, state.model)
            results.append(png(image))  # here, not on the loop: a large PNG takes a while to write
        except BitstreamError as exc:  # a stream that passed the checks but is still bad
            results.append(stream_error(exc))
        except (ValueError, IndexError, OverflowError) as exc:  # crafted payload with a valid checksum
            results.append(BadRequest(f"bitstream could not be decoded: {exc}", details={"reason": "corrupted"}))
    return results


class ImageCodecPlugin(FamilyPlugin[CodecState]):
    spec = SPEC

    def __init__(self) -> None:
        self.router = router

    def prepare(self, version: LoadedVersion) -> CodecState:
        """Parse the manifest, load the shipped pmf tables and register the two codec procedures."""
        pre = version.manifest.preprocessing_as(Preprocessing)
        tables = PmfTables.from_bytes(version.asset_path(TABLES_ASSET).read_bytes())
        quality = CodecQuality.create(self.metrics_of(version), version.name, str(version.version), pre.quality,
                                      self.settings_of(version).quality_psnr_fraction)
        state = CodecState(preprocessing=pre, model=pre.codec_model(version.name, tables), quality=quality)
        nets = VersionNetworks(version)
        version.add_procedure(COMPRESS_PROCEDURE, partial(compress_batch, nets, state))
        version.add_procedure(DECOMPRESS_PROCEDURE, partial(decompress_batch, nets, state))
        return state


PLUGIN = ImageCodecPlugin()
