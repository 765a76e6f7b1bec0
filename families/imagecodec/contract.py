"""The image codec artifact contract: the manifest's `preprocessing` section, the asset and the graph names.

Export (export/families/imagecodec.py) writes `Preprocessing`; the service parses it back with the same class
(`Manifest.preprocessing_as`) and builds the version's `CodecModel` from it and the shipped pmf tables. Two
layouts exist on disk: the first exports lack `max_aspect` (then `MAX_ASPECT`); every export writes
`quality` and `lambda` from the checkpoint, null when the checkpoint had none. Versions exported before
quantisation steps existed lack `step` (then 1, the trained operating point).

Quality levels are models named `imagecodec-q<level>` (`level_name`); a request without a level gets the
model named `imagecodec` when one is served, else `DEFAULT_QUALITY`. A level made from a checkpoint by a
quantisation step other than 1 carries the hash of (weights, step) (`level_hash`): its streams name it,
and no other step decodes them.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from pydantic import ConfigDict, Field, field_validator, model_validator

from families.imagecodec.codec import GRAPH_INPUTS, MAX_ASPECT, PAD_MULTIPLE, CodecModel
from families.imagecodec.tables import PmfTables
from families.manifest import PreprocessingSection

TABLES_ASSET = "pmf_tables.npz"  # integer pmf tables (y per scale index, z per channel): PmfTables.to_bytes()
GRAPH_NAMES: tuple[str, ...] = tuple(GRAPH_INPUTS)  # g_a, h_a, h_s, g_s, ctx_init, step_2 .. step_11
PRIMARY_GRAPH = "g_a"  # what /v2/models/{name} describes and warm-up runs first
COMPRESS_PROCEDURE = "compress"  # the version's procedure queues: the coding loop on its worker thread
DECOMPRESS_PROCEDURE = "decompress"
DEFAULT_MAX_PIXELS = 4096 * 4096  # padded area; what versions exported before the cap was written got
ENTROPY_MODEL = ("gaussian conditional for y (scale table of 64 levels, 0.11..64), "
                 "per-channel gaussian prior for z")
INPUT_DESCRIPTION = "RGB uint8, padded (edge) to a multiple of 64, scaled to [0, 1]"
FAMILY_NAME = "imagecodec"
DEFAULT_QUALITY = 2  # the level a request without `quality` gets (the trained operating point)


def level_name(quality: int) -> str:
    """The model name of a quality level."""
    return f"{FAMILY_NAME}-q{quality}"


def level_hash(weights_hash: bytes, step: float | Sequence[float]) -> bytes:
    """The identity a version's streams carry: the weights' hash at step 1 (streams unchanged from before
    steps existed), else a hash of (weights, step), so a stream never decodes with another step. A per-channel
    step vector (a trained level of a variable-rate model) hashes its list of steps."""
    if isinstance(step, int | float):
        if not (math.isfinite(step) and step > 0):
            raise ValueError(f"quantisation step must be a positive number, got {step}")
        if step == 1.0:
            return bytes(weights_hash)
        tag = f"|step={float(step)!r}"
    else:
        values = [float(v) for v in step]
        if not values or not all(math.isfinite(v) and v > 0 for v in values):
            raise ValueError("per-channel quantisation steps must be positive numbers")
        tag = f"|steps={values!r}"
    digest = hashlib.sha256(bytes(weights_hash) + tag.encode()).digest()
    return digest[: len(weights_hash)]


class Preprocessing(PreprocessingSection):
    """What the service needs to code with a version: latent sizes, the model's identity in the stream
    (`model_hash`, 8 bytes as hex), the size limits and, for the record, what it was trained for."""

    # `lambda` is a Python keyword: the field is `lmbda`, written and read as "lambda".
    model_config = ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True,
                              serialize_by_alias=True)

    pad_multiple: int = Field(PAD_MULTIPLE, gt=0)
    M: int = Field(gt=0)  # latent y channels
    N: int = Field(gt=0)  # hyper-latent z channels
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0)  # of the padded image
    max_aspect: int = Field(MAX_ASPECT, gt=0)  # padded long side / short side
    model_hash: str = Field(pattern=r"^[0-9a-fA-F]{16}$")
    quality: int | None = None  # the quality level (1..6): the checkpoint's, or the level this version serves
    # Quantisation step of y (1: the trained point), or one per latent channel (a variable-rate model's level).
    step: float | list[float] = 1.0  # checked below: positive and finite, one per channel when a list
    lmbda: float | None = Field(None, alias="lambda")
    entropy_model: str = ENTROPY_MODEL
    input: str = INPUT_DESCRIPTION

    @field_validator("pad_multiple")
    @classmethod
    def _fits_this_code(cls, value: int) -> int:
        if value != PAD_MULTIPLE:  # the procedure pads to its own multiple: another one cannot be served
            raise ValueError(f"pad_multiple {value} is not this code's {PAD_MULTIPLE}")
        return value

    @field_validator("step")
    @classmethod
    def _positive_steps(cls, value: float | list[float]) -> float | list[float]:
        values = value if isinstance(value, list) else [value]
        if not values or not all(math.isfinite(v) and v > 0 for v in values):
            raise ValueError("quantisation steps must be positive numbers")
        return value

    @model_validator(mode="after")
    def _one_step_per_channel(self) -> Preprocessing:
        if isinstance(self.step, list) and len(self.step) != self.M:
            raise ValueError(f"step has {len(self.step)} per-channel values, M is {self.M}")
        return self

    @property
    def hash_bytes(self) -> bytes:
        return bytes.fromhex(self.model_hash)

    def codec_model(self, name: str, tables: PmfTables) -> CodecModel:
        """The coding procedure's model of a version named `name` with its shipped tables."""
        return CodecModel(name=name, model_hash=self.hash_bytes, M=self.M, N=self.N, tables=tables,
                          max_pixels=self.max_pixels, max_aspect=self.max_aspect,
                          step=tuple(self.step) if isinstance(self.step, list) else self.step)
