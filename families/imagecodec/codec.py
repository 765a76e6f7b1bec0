"""The codec procedure, written once: used by the evaluation CLI (eager or exported graphs) and the
service (exported graphs through the runtimes).

Cross-runtime determinism. Symbols are round(y - mu) and y_hat = symbol + mu; only the pmf choice is a
discrete function of the networks' float outputs: the scale-table index rint(t) of the predicted
log-scale. Two runtimes (ONNX Runtime, TorchScript, CPU vs GPU) give t values a few 1e-6 apart, so an
index computed near a table boundary (t close to k + 0.5) could differ between encoder and decoder and
desynchronise the range coder. The encoder therefore lists every element whose t lies within
HINT_MARGIN of a boundary, with the index it used, in the `hints` substream; the decoder uses those
indices instead of its own rounding. Any other element is at least HINT_MARGIN away from a boundary on
the encoder side, so any decoder whose t is within HINT_MARGIN of the encoder's picks the same index.
Mean differences only shift y_hat by float noise (no discrete decision), so the decoded symbols - the
latent - are bit-exact across runtimes, and reconstructions agree to float precision.

Variable rate by quantisation step. A model version codes y with its step `step` (Delta, the manifest's
`step`): symbols are round((y - mu) / Delta) coded with the Gaussian of scale sigma / Delta (the table
position of log sigma - log Delta), and y_hat = mu + Delta * symbol, so the context steps and the synthesis
see dequantised latents. z stays at step 1. Delta = 1 is the trained operating point and gives exactly the
streams of the code before steps existed (x / 1, log 1 = 0 and 1 * s are exact in float32). A stream's
step is not in the container: the version's hash (in every header) covers the weights and the step
(`contract.level_hash`), so a stream decoded with another step is refused as a model mismatch.

Per-channel steps (trained levels of a variable-rate model): `step` may be a vector of M steps, one per
latent channel (the level's learned quantisation steps, `training.imagecodec.model`); every element then
uses its channel's step in the same three places. A scalar step runs exactly the arithmetic it always ran.
"""

from __future__ import annotations

import functools
import math
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import constriction
import numpy as np

from families.imagecodec import loopfilter
from families.imagecodec.bitstream import HASH_BYTES, SUBSTREAMS, Bitstream, BitstreamError, StreamHeader
from families.imagecodec.schedule import LATENT_MULTIPLE, NUM_STEPS, STEP_FACTOR, step_map
from families.imagecodec.tables import SCALE_LEVELS, PmfTables, scale_position

PAD_MULTIPLE = 64  # 16 (g_a) * 4 (s1 grid of the latent)
LATENT_STRIDE = 16  # image pixels per latent element along each axis
# Padded long side / short side. The cost follows the padded area, and a strip is no photo: a 1x65536
# image pads to 64x65536.
MAX_ASPECT = 64
# Bits the range coder may hold in its 64-bit state without having written them as words.
CODER_STATE_BITS = 64
HINT_MARGIN = 5e-4  # table-index units; 25x the largest ORT-vs-torch CPU difference measured (1.9e-5)

# Graph names and input order: the contract between export and this procedure.
GRAPH_INPUTS: dict[str, tuple[str, ...]] = {
    "g_a": ("x",), "h_a": ("y",), "h_s": ("z_hat",), "g_s": ("y_hat",), "ctx_init": ("hp",),
    **{f"step_{k + 1}": ("h_prev", "y_hat", "hp", "known") for k in range(1, NUM_STEPS)},
}
GRAPH_OUTPUTS: dict[str, tuple[str, ...]] = {
    "g_a": ("y",), "h_a": ("z",), "h_s": ("hp",), "g_s": ("x_hat",), "ctx_init": ("h",),
    **{f"step_{k + 1}": ("h", "log_scale", "mean") for k in range(1, NUM_STEPS)},
}

# graph name, {input name: array} -> {output name: array}
Networks = Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass
class CodecModel:
    """What the procedure needs besides the networks: identity, sizes and the shipped pmf tables."""

    name: str
    model_hash: bytes
    M: int
    N: int
    tables: PmfTables
    max_pixels: int = 4096 * 4096  # of the padded image
    max_aspect: int = MAX_ASPECT
    # Quantisation step of y (1 = the trained operating point): a number, or one step per latent channel (M).
    step: float | tuple[float, ...] = 1.0
    _y_models: list = field(default_factory=list, repr=False)
    _z_models: list = field(default_factory=list, repr=False)
    _y_min_bits: float = field(default=0.0, repr=False)  # least information any y symbol carries
    _z_min_bits: float = field(default=0.0, repr=False)  # least information of one z cell (all channels)

    def __post_init__(self) -> None:
        if len(self.model_hash) != HASH_BYTES:
            raise ValueError(f"model hash must be {HASH_BYTES} bytes")
        self.step = check_step(self.step, self.M)
        self._y_models = [_categorical(p) for p in self.tables.y_pmfs]
        self._z_models = [_categorical(p) for p in self.tables.z_pmfs]
        self._y_min_bits = min(_min_bits(p) for p in self.tables.y_pmfs)
        self._z_min_bits = sum(_min_bits(p) for p in self.tables.z_pmfs)


def check_step(step: float | Sequence[float], channels: int) -> float | tuple[float, ...]:
    """A positive finite step, or exactly `channels` of them (per latent channel, as a tuple)."""
    if isinstance(step, int | float | np.floating | np.integer):
        value = float(step)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"quantisation step must be a positive number, got {step}")
        return value
    values = tuple(float(v) for v in step)
    if len(values) != channels:
        raise ValueError(f"per-channel quantisation steps must number {channels} (M), got {len(values)}")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError("per-channel quantisation steps must be positive numbers")
    return values


def _step_arrays(step: float | tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(step, log step) as float32: 0-d for a scalar step (the arithmetic of before), (M,) per channel."""
    if isinstance(step, float):
        return np.float32(step), np.float32(math.log(step))
    values = np.asarray(step, dtype=np.float64)
    return values.astype(np.float32), np.log(values).astype(np.float32)


def _min_bits(counts: np.ndarray) -> float:
    """Information of the likeliest symbol of a table: no symbol coded with it costs less."""
    return float(-np.log2(counts.max() / counts.sum()))


def _categorical(counts: np.ndarray):
    # Exact dyadic probabilities from the integer table; constriction quantises them deterministically.
    return constriction.stream.model.Categorical(counts.astype(np.float64) / counts.sum(), perfect=False)


@dataclass
class CodecInfo:
    bits: int
    num_pixels: int
    hints: int
    escapes: int
    seconds: float
    symbols: np.ndarray | None = None  # decoded/encoded y symbols (M, H, W), for bit-exactness checks

    @property
    def bpp(self) -> float:
        return self.bits / self.num_pixels


class SizeError(ValueError):
    """An image size the model will not code; `kind` is 'empty', 'pixels' (padded area) or 'aspect'."""

    def __init__(self, kind: str, message: str, details: dict[str, int]) -> None:
        super().__init__(message)
        self.kind = kind
        self.details = details


def padded_size(height: int, width: int) -> tuple[int, int]:
    """The size the networks see: both sides rounded up to a multiple of PAD_MULTIPLE."""
    return -(-height // PAD_MULTIPLE) * PAD_MULTIPLE, -(-width // PAD_MULTIPLE) * PAD_MULTIPLE


def check_size(height: int, width: int, model: CodecModel) -> None:
    """Refuse sizes whose padded area exceeds `max_pixels` or whose padded aspect exceeds `max_aspect`:
    the coding cost (time and memory) follows the padded area, not the announced one."""
    ph, pw = padded_size(height, width)
    details = {"width": width, "height": height, "padded_width": pw, "padded_height": ph,
               "max_pixels": model.max_pixels, "max_aspect": model.max_aspect}
    if height < 1 or width < 1:
        raise SizeError("empty", f"image of {width}x{height} pixels has no pixels", details)
    if ph * pw > model.max_pixels:
        raise SizeError("pixels", f"image of {width}x{height} pixels is coded padded to {pw}x{ph} = {pw * ph} "
                        f"pixels, over the limit of {model.max_pixels} pixels", details)
    if max(ph, pw) > model.max_aspect * min(ph, pw):
        raise SizeError("aspect", f"image of {width}x{height} pixels (padded {pw}x{ph}) has an aspect ratio over "
                        f"the limit of {model.max_aspect}:1", details)


def pad_image(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (1, 3, Hp, Wp) in [0, 1], edge-padded to a multiple of 64."""
    h, w = image.shape[:2]
    ph, pw = (-h) % PAD_MULTIPLE, (-w) % PAD_MULTIPLE
    padded = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="edge")
    return np.ascontiguousarray(padded.transpose(2, 0, 1)[None].astype(np.float32) / np.float32(255.0))


def to_uint8(x_hat: np.ndarray, height: int, width: int) -> np.ndarray:
    """float (1, 3, Hp, Wp) -> uint8 (height, width, 3), cropped and rounded."""
    img = np.clip(x_hat[0, :, :height, :width], 0.0, 1.0) * 255.0
    return np.rint(img).astype(np.uint8).transpose(1, 2, 0).copy()


@functools.lru_cache(maxsize=16)
def _schedule(m: int, h: int, w: int) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    smap = step_map(m, h, w)
    flat = smap.ravel()
    return smap, tuple(np.flatnonzero(flat == k) for k in range(NUM_STEPS))


def _scatter(grid: np.ndarray, factor: int, h: int, w: int) -> np.ndarray:
    full = np.zeros((grid.shape[1], h, w), dtype=np.float32)
    full[:, ::factor, ::factor] = grid[0]
    return full


def _ambiguous(t: np.ndarray) -> np.ndarray:
    """Elements whose table position is within HINT_MARGIN of a boundary that changes the index."""
    frac = np.abs((t - 0.5) - np.rint(t - 0.5))
    return (frac < HINT_MARGIN) & (t > 0.0) & (t < SCALE_LEVELS - 1)


def _table_index(t: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(t), 0, SCALE_LEVELS - 1).astype(np.int64)


def _pack_hints(positions: np.ndarray, indices: np.ndarray) -> bytes:
    order = np.argsort(positions, kind="stable")
    positions, indices = positions[order].astype(np.int64), indices[order]
    deltas = np.diff(positions, prepend=0).astype("<u4")
    raw = np.uint32(len(positions)).tobytes() + deltas.tobytes() + indices.astype(np.uint8).tobytes()
    return zlib.compress(raw, 9)


def _unpack_hints(data: bytes, elements: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted positions, table indices). At most one hint per latent element, so the substream never
    inflates to more than 4 + 5 * elements bytes: inflation stops there (a zlib bomb costs nothing)."""
    if not data:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    limit = 4 + 5 * elements
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(data, limit + 1)
    except zlib.error:
        raise BitstreamError("corrupted", "hints substream is corrupted") from None
    if len(raw) > limit:
        raise BitstreamError("corrupted", f"hints substream inflates beyond {limit} bytes, the most an image "
                             f"of this size needs ({elements} latent elements)")
    if not inflater.eof or inflater.unused_data:
        raise BitstreamError("corrupted", "hints substream is truncated or has trailing bytes")
    count = int(np.frombuffer(raw[:4], dtype="<u4")[0]) if len(raw) >= 4 else -1
    if count < 0 or len(raw) != 4 + 5 * count:
        raise BitstreamError("corrupted", "hints substream has the wrong length")
    deltas = np.frombuffer(raw[4:4 + 4 * count], dtype="<u4").astype(np.int64)
    positions = np.cumsum(deltas)
    indices = np.frombuffer(raw[4 + 4 * count:], dtype=np.uint8).astype(np.int64)
    if count and ((deltas[1:] == 0).any() or positions[-1] >= elements or indices.max() >= SCALE_LEVELS):
        raise BitstreamError("corrupted", "hints substream points outside the latent or repeats a position")
    return positions, indices


class _SymbolCoder:
    """Range coder over categorical models with an escape bin for |symbol| > L."""

    def __init__(self, compressed: bytes | None = None, escapes: bytes | None = None) -> None:
        if compressed is None:
            self.encoder = constriction.stream.queue.RangeEncoder()
            self.escapes: list[int] = []
        else:
            if len(compressed) % 4:
                raise BitstreamError("corrupted", "entropy-coded substream has a length that is not a multiple of 4")
            self.decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(compressed, dtype="<u4").copy())
            self.escape_values = np.frombuffer(escapes or b"", dtype="<i4") if escapes is not None else None
            self.escape_pos = 0

    def encode(self, symbols: np.ndarray, model, counts: np.ndarray) -> None:
        half = (len(counts) - 2) // 2
        escape = np.abs(symbols) > half
        categories = np.where(escape, 2 * half + 1, symbols + half).astype(np.int32)
        self.encoder.encode(categories, model)
        self.escapes.extend(symbols[escape].tolist())

    def decode(self, count: int, model, counts: np.ndarray) -> np.ndarray:
        half = (len(counts) - 2) // 2
        try:
            categories = np.asarray(self.decoder.decode(model, count), dtype=np.int64)
        except (AssertionError, ValueError, RuntimeError) as exc:  # constriction's check of invalid data
            raise BitstreamError("corrupted", f"entropy-coded data is invalid: {exc}") from None
        symbols = categories - half
        escape = np.flatnonzero(categories == 2 * half + 1)
        if escape.size:
            end = self.escape_pos + escape.size
            if self.escape_values is None or end > self.escape_values.size:
                raise BitstreamError("corrupted", "escape substream exhausted (corrupted stream)")
            symbols[escape] = self.escape_values[self.escape_pos:end]
            self.escape_pos = end
        return symbols

    def finish(self) -> tuple[bytes, bytes]:
        data = self.encoder.get_compressed().astype("<u4").tobytes()
        return data, np.asarray(self.escapes, dtype="<i4").tobytes()


def _code_by_index(coder: _SymbolCoder, models: list, tables: list[np.ndarray], indices: np.ndarray,
                   symbols: np.ndarray | None) -> np.ndarray:
    """Encode (symbols given) or decode the elements of one step, grouped by table index, in a fixed
    order that both sides derive from `indices` alone."""
    out = np.zeros(indices.shape, dtype=np.int64) if symbols is None else symbols
    for value in np.unique(indices):
        sel = np.flatnonzero(indices == value)
        if symbols is None:
            out[sel] = coder.decode(sel.size, models[value], tables[value])
        else:
            coder.encode(symbols[sel], models[value], tables[value])
    return out


def _run(nets: Networks, graph: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
    return nets(graph, {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in inputs.items()})


def _progressive(nets: Networks, model: CodecModel, hp: np.ndarray, coder: _SymbolCoder, y: np.ndarray | None,
                 hints: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray, dict]:
    """The 11-step loop with coding interleaved. Encoder: y given, hints collected. Decoder: hints given
    as (sorted positions, indices)."""
    _, m, h, w = hp.shape[0], model.M, hp.shape[2], hp.shape[3]
    smap, positions = _schedule(m, h, w)
    y_hat = np.zeros(m * h * w, dtype=np.float32)
    symbols_all = np.zeros(m * h * w, dtype=np.int64)
    collected: dict[int, int] = {}
    y_flat = None if y is None else y.reshape(-1)
    hint_pos, hint_idx = hints if hints is not None else (np.zeros(0, dtype=np.int64),) * 2
    step_c, log_step_c = _step_arrays(model.step)
    state = None
    for k in range(NUM_STEPS):
        pos = positions[k]
        if k == 0:
            log_scale = hp[0, :m].reshape(-1)[pos]
            mean = hp[0, m:].reshape(-1)[pos]
            state = _run(nets, "ctx_init", hp=hp)["h"]
        else:
            known = (smap < k).astype(np.float32)[None]
            out = _run(nets, f"step_{k + 1}", h_prev=state, y_hat=y_hat.reshape(1, m, h, w), hp=hp, known=known)
            state = out["h"]
            f = STEP_FACTOR[k]
            log_scale = _scatter(out["log_scale"], f, h, w).reshape(-1)[pos]
            mean = _scatter(out["mean"], f, h, w).reshape(-1)[pos]
        # this step's elements' quantisation steps (one number, or the step of each element's channel)
        step, log_step = (step_c, log_step_c) if step_c.ndim == 0 else (step_c[pos // (h * w)],
                                                                        log_step_c[pos // (h * w)])
        # The pmf of the step-scaled symbol: scale sigma / Delta (log_step is 0 at Delta = 1: exact).
        # Non-finite parameters (only from a crafted stream) map to fixed indices on both sides.
        t = np.nan_to_num(scale_position(log_scale - log_step), nan=0.0, posinf=SCALE_LEVELS - 1, neginf=0.0)
        index = _table_index(t)
        if y_flat is not None:
            amb = np.flatnonzero(_ambiguous(t))
            collected.update(zip(pos[amb].tolist(), index[amb].tolist(), strict=True))
            symbols = np.rint((y_flat[pos] - mean) / step).astype(np.int64)
            _code_by_index(coder, model._y_models, model.tables.y_pmfs, index, symbols)
        else:
            if hint_pos.size:  # vectorised lookup: hints may cover every element
                at = np.minimum(np.searchsorted(hint_pos, pos), hint_pos.size - 1)
                hit = hint_pos[at] == pos
                index[hit] = hint_idx[at[hit]]
            symbols = _code_by_index(coder, model._y_models, model.tables.y_pmfs, index, None)
        y_hat[pos] = step * symbols.astype(np.float32) + mean
        symbols_all[pos] = symbols
    return y_hat.reshape(1, m, h, w), symbols_all.reshape(m, h, w), collected


def _code_z(coder: _SymbolCoder, model: CodecModel, z_symbols: np.ndarray | None, shape) -> np.ndarray:
    n = model.N
    out = np.zeros(shape, dtype=np.int64) if z_symbols is None else z_symbols
    for c in range(n):
        if z_symbols is None:
            out[c] = coder.decode(out[c].size, model._z_models[c], model.tables.z_pmfs[c]).reshape(out[c].shape)
        else:
            coder.encode(z_symbols[c].reshape(-1), model._z_models[c], model.tables.z_pmfs[c])
    return out


def encode(image: np.ndarray, nets: Networks, model: CodecModel, loop_filter: bool = True) -> tuple[bytes, CodecInfo]:
    """uint8 (H, W, 3) RGB -> bitstream bytes. `loop_filter=False` never sends the adaptive loop filter (one
    synthesis pass fewer; for measuring what the filter costs and gains)."""
    start = time.perf_counter()
    height, width = image.shape[:2]
    check_size(height, width, model)
    x = pad_image(image)
    y = _run(nets, "g_a", x=x)["y"]
    z = _run(nets, "h_a", y=y)["z"]
    zm = model.tables.z_mean.reshape(-1, 1, 1)
    z_symbols = np.rint(z[0] - zm).astype(np.int64)
    z_coder = _SymbolCoder()
    _code_z(z_coder, model, z_symbols, z_symbols.shape)
    z_hat = (z_symbols.astype(np.float32) + zm)[None]
    hp = _run(nets, "h_s", z_hat=z_hat)["hp"]
    y_coder = _SymbolCoder()
    y_hat, symbols, hints = _progressive(nets, model, hp, y_coder, y[0], None)
    z_bytes, z_esc = z_coder.finish()
    y_bytes, y_esc = y_coder.finish()
    hint_bytes = _pack_hints(np.array(list(hints), dtype=np.int64), np.array(list(hints.values()), dtype=np.int64))
    filter_bytes = b""
    if loop_filter:  # fitted on the decoder's own reconstruction
        x_hat = _run(nets, "g_s", y_hat=y_hat)["x_hat"][0, :, :height, :width]
        filter_bytes = loopfilter.to_bytes(loopfilter.choose(x_hat, x[0, :, :height, :width]))
    stream = Bitstream(model.name, model.model_hash, height, width, z=z_bytes, y=y_bytes,
                       escapes=z_esc + y_esc + np.uint32(len(z_esc) // 4).tobytes(), hints=hint_bytes,
                       filter=filter_bytes)
    data = stream.to_bytes()
    info = CodecInfo(bits=8 * len(data), num_pixels=height * width, hints=len(hints),
                     escapes=(len(z_esc) + len(y_esc)) // 4, seconds=time.perf_counter() - start, symbols=symbols)
    return data, info


def minimum_substream_bytes(model: CodecModel, height: int, width: int) -> dict[str, int]:
    """The fewest bytes each substream can have for an image of this size. Every latent element is coded,
    and none costs less than its table's likeliest symbol; half of that sum (slack for the coder's
    quantisation of the pmfs), less what the coder's state holds unwritten, is a floor no real stream
    goes under. The escapes substream always ends with its z-escape count."""
    ph, pw = padded_size(height, width)
    lat_h, lat_w = ph // LATENT_STRIDE, pw // LATENT_STRIDE
    z_bits = model._z_min_bits * (lat_h // LATENT_MULTIPLE) * (lat_w // LATENT_MULTIPLE)
    y_bits = model._y_min_bits * model.M * lat_h * lat_w
    return {"z": _min_coded_bytes(z_bits), "y": _min_coded_bytes(y_bits), "escapes": 4, "hints": 0, "filter": 0}


def _min_coded_bytes(bits: float) -> int:
    return 4 * max(1, math.floor((0.5 * bits - CODER_STATE_BITS) / 32))  # whole 32-bit words, >= 1


def check_stream(stream: Bitstream | StreamHeader, model: CodecModel) -> None:
    """Refuse streams this model cannot decode, with the reason: a header is enough (no substream is read)."""
    # The hash (of the weights) is the identity; the name may differ, e.g. the TorchScript export of the
    # same checkpoint served under another name decodes streams of the ONNX one.
    if stream.model_hash != model.model_hash:
        raise BitstreamError(
            "model", f"bitstream was made by model {stream.model_name!r} (hash {stream.model_hash.hex()}), "
            f"not {model.name!r} (hash {model.model_hash.hex()})")
    try:
        check_size(stream.height, stream.width, model)
    except SizeError as exc:
        raise BitstreamError("size", f"bitstream announces an unsupported size: {exc}") from None
    header = stream if isinstance(stream, StreamHeader) else None
    lengths = header.lengths if header else tuple(len(getattr(stream, k)) for k in SUBSTREAMS)
    floors = minimum_substream_bytes(model, stream.height, stream.width)
    for (key, floor), length in zip(floors.items(), lengths, strict=True):
        if length < floor:
            raise BitstreamError("corrupted", f"{key} substream has {length} bytes; an image of "
                                 f"{stream.width}x{stream.height} needs at least {floor}")
        if key in ("z", "y", "escapes") and length % 4:
            raise BitstreamError("corrupted", f"{key} substream length {length} is not a multiple of 4")
        if key == "filter" and length not in (0, loopfilter.FILTER_BYTES):
            raise BitstreamError("corrupted", f"filter substream has {length} bytes, expected 0 or "
                                 f"{loopfilter.FILTER_BYTES}")


@dataclass
class PreparedStream:
    """A stream that passed every check that needs no network: parsed, checksummed, hints inflated."""

    stream: Bitstream
    nbytes: int
    hints: tuple[np.ndarray, np.ndarray]
    z_escapes: bytes
    y_escapes: bytes
    loop_filter: np.ndarray | None = None  # (3, 28) coefficients, None when the stream carries none

    @property
    def latent_size(self) -> tuple[int, int]:
        ph, pw = padded_size(self.stream.height, self.stream.width)
        return ph // LATENT_STRIDE, pw // LATENT_STRIDE


def prepare_stream(data: bytes, model: CodecModel) -> PreparedStream:
    """Everything before the networks (a few ms, bounded memory); raises BitstreamError."""
    check_stream(StreamHeader.peek(data), model)
    stream = Bitstream.parse(data)
    ph, pw = padded_size(stream.height, stream.width)
    hints = _unpack_hints(stream.hints, model.M * (ph // LATENT_STRIDE) * (pw // LATENT_STRIDE))
    esc = stream.escapes
    n_z_esc = int(np.frombuffer(esc[-4:], dtype="<u4")[0])
    if 4 * n_z_esc > len(esc) - 4:
        raise BitstreamError("corrupted", "escape substream has the wrong length")
    try:
        coefficients = loopfilter.from_bytes(stream.filter)
    except ValueError as exc:
        raise BitstreamError("corrupted", str(exc)) from None
    return PreparedStream(stream, len(data), hints, esc[: 4 * n_z_esc], esc[4 * n_z_esc: -4], coefficients)


def decode(data: bytes | PreparedStream, nets: Networks, model: CodecModel) -> tuple[np.ndarray, CodecInfo]:
    """Bitstream bytes (or a prepared stream) -> uint8 (H, W, 3). Raises BitstreamError for streams it
    cannot decode."""
    start = time.perf_counter()
    prepared = data if isinstance(data, PreparedStream) else prepare_stream(data, model)
    stream = prepared.stream
    hp_h, hp_w = prepared.latent_size
    assert hp_h % LATENT_MULTIPLE == 0 and hp_w % LATENT_MULTIPLE == 0
    z_coder = _SymbolCoder(stream.z, prepared.z_escapes)
    z_symbols = _code_z(z_coder, model, None, (model.N, hp_h // 4, hp_w // 4))
    zm = model.tables.z_mean.reshape(-1, 1, 1)
    z_hat = (z_symbols.astype(np.float32) + zm)[None]
    hp = _run(nets, "h_s", z_hat=z_hat)["hp"]
    y_coder = _SymbolCoder(stream.y, prepared.y_escapes)
    y_hat, symbols, _ = _progressive(nets, model, hp, y_coder, None, prepared.hints)
    x_hat = _run(nets, "g_s", y_hat=y_hat)["x_hat"][:, :, :stream.height, :stream.width]
    if prepared.loop_filter is not None:
        x_hat = loopfilter.apply(x_hat[0], prepared.loop_filter)[None]
    image = to_uint8(x_hat, stream.height, stream.width)
    info = CodecInfo(bits=8 * prepared.nbytes, num_pixels=stream.height * stream.width,
                     hints=int(prepared.hints[0].size), escapes=0, seconds=time.perf_counter() - start,
                     symbols=symbols)
    return image, info
