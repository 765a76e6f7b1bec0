"""Image compression family: HPCM codec with RWKV context cells.

Model naming: one model per quality level, `imagecodec-q1` .. `imagecodec-q6` (higher = more bits);
`make serve` ships the default model `imagecodec` (one quality level). Routes: POST /image/compress,
POST /image/decompress (see routes.py).
"""

from __future__ import annotations

from service.families.imagecodec.metrics import ROLLOUT_QUALITY, ImagecodecMetrics
from service.families.imagecodec.settings import ImagecodecSettings
from service.plugin import FamilySpec

SPEC = FamilySpec(
    "imagecodec", route_prefix="/image", summary="learned image compression",
    # A stream decodes only with the weights that wrote it: a rollout never sends it to another version.
    version_pinned_routes=frozenset({"/image/decompress"}),
    settings=ImagecodecSettings, metrics=ImagecodecMetrics, rollout_quality=ROLLOUT_QUALITY)
