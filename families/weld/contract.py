"""The weld artifact contract: the manifest's `preprocessing` section, and the graph and asset names.

Export (export/families/weld.py) writes `Preprocessing`; the service parses it back with the same class
(`Manifest.preprocessing_as`). The layout is the one every weld manifest so far has: `params` (the shared
`PreprocessParams`), `inputs` (tensor shapes per modality), `optional_modalities`, `knn`, `gallery` (a summary
of the shipped references) and `quality` (the OOD threshold; absent before it existed, `{}` for a gallery too
small to have one).

A version that declares `optional_modalities` has a graph with a fifth input, `mask_input` (MASK_INPUT): the
(B, 4) float presence of each modality (MODALITIES order, 1 = present). The service sends zeros and a 0 for
an optional modality a sample lacks; the model drops its tokens. Manifests without `mask_input` (all before
it existed) have four inputs and refuse any missing modality.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from families.manifest import PreprocessingSection
from families.weld.knn import METRICS
from families.weld.preprocessing import MODALITIES, PreprocessParams

TASK = "classification"
GRAPH = "model"  # video, photos, audio, sensors -> embedding
EMBEDDING_OUTPUT = "embedding"
MASK_INPUT = "modality_mask"  # (B, 4) float32 presence, MODALITIES order; only in versions with optional modalities
GALLERY_ASSET = "gallery.npz"  # k-NN references: embeddings (N, D) float32, labels (N,) int64, ids (N,) str


class Knn(BaseModel):
    """The served k-NN: neighbours per query, distance, and the asset holding the references."""

    model_config = ConfigDict(extra="forbid")

    k: int = Field(5, ge=1)
    metric: str = "cosine"
    gallery: str = GALLERY_ASSET

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {value!r}")
        return value


class GallerySummary(BaseModel):
    """How many shipped references, per class (provenance for the reader of a manifest)."""

    size: int
    per_class: dict[str, int]


class OodThreshold(BaseModel):
    """The leave-one-out nearest-distance quantile of the shipped gallery (families/weld/ood.py)."""

    ood_threshold: float
    ood_metric: str
    ood_quantile: float


class Preprocessing(PreprocessingSection):
    """What the service needs to decode uploads, check tensors and search: the manifest's `preprocessing`."""

    model_config = ConfigDict(extra="forbid")

    params: PreprocessParams
    inputs: dict[str, list[int]] | None = None
    optional_modalities: list[str] = []
    mask_input: str | None = None  # the graph's presence-mask input; None: four inputs, every modality required
    knn: Knn = Knn()
    gallery: GallerySummary | None = None
    quality: OodThreshold | None = None

    @field_validator("params", mode="before")
    @classmethod
    def _known_params(cls, value: Any) -> Any:
        # As PreprocessParams.from_dict: keys of parameters this code no longer has are ignored.
        return PreprocessParams.from_dict(value) if isinstance(value, dict) else value

    @field_validator("quality", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == {} else value  # written for galleries too small to have a spread

    @field_validator("optional_modalities")
    @classmethod
    def _known_modalities(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(MODALITIES))
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; the weld modalities are {list(MODALITIES)}")
        return value

    @model_validator(mode="after")
    def _optional_needs_mask(self) -> Preprocessing:
        if self.optional_modalities and self.mask_input is None:
            raise ValueError("optional_modalities need a graph with a presence-mask input (mask_input)")
        return self
