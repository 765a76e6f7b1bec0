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
"""

from __future__ import annotations

import functools
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import constriction
import numpy as np

from service.families.imagecodec.bitstream import HASH_BYTES, Bitstream, BitstreamError
from service.families.imagecodec.schedule import LATENT_MULTIPLE, NUM_STEPS, STEP_FACTOR, step_map
from service.families.imagecodec.tables import SCALE_LEVELS, PmfTables, scale_position

PAD_MULTIPLE = 64  # 16 (g_a) * 4 (s1 grid of the latent)
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
    max_pixels: int = 4096 * 4096
    _y_models: list = field(default_factory=list, repr=False)
    _z_models: list = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if len(self.model_hash) != HASH_BYTES:
            raise ValueError(f"model hash must be {HASH_BYTES} bytes")
        self._y_models = [_categorical(p) for p in self.tables.y_pmfs]
        self._z_models = [_categorical(p) for p in self.tables.z_pmfs]


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


def _unpack_hints(data: bytes, limit: int) -> dict[int, int]:
    try:
        raw = zlib.decompress(data) if data else np.uint32(0).tobytes()
    except zlib.error:
        raise BitstreamError("corrupted", "hints substream is corrupted") from None
    count = int(np.frombuffer(raw[:4], dtype="<u4")[0]) if len(raw) >= 4 else -1
    if count < 0 or len(raw) != 4 + 5 * count:
        raise BitstreamError("corrupted", "hints substream has the wrong length")
    positions = np.cumsum(np.frombuffer(raw[4:4 + 4 * count], dtype="<u4").astype(np.int64))
    indices = np.frombuffer(raw[4 + 4 * count:], dtype=np.uint8).astype(np.int64)
    if count and (positions[-1] >= limit or indices.max() >= SCALE_LEVELS):
        raise BitstreamError("corrupted", "hints substream points outside the latent")
    return dict(zip(positions.tolist(), indices.tolist(), strict=True))


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


def _progressive(nets: Networks, model: CodecModel, hp: np.ndarray, coder: _SymbolCoder,
                 y: np.ndarray | None, hints: dict[int, int] | None) -> tuple[np.ndarray, np.ndarray, dict]:
    """The 11-step loop with coding interleaved. Encoder: y given, hints collected. Decoder: hints given."""
    _, m, h, w = hp.shape[0], model.M, hp.shape[2], hp.shape[3]
    smap, positions = _schedule(m, h, w)
    y_hat = np.zeros(m * h * w, dtype=np.float32)
    symbols_all = np.zeros(m * h * w, dtype=np.int64)
    collected: dict[int, int] = {}
    y_flat = None if y is None else y.reshape(-1)
    hint_pos = np.array(sorted(hints), dtype=np.int64) if hints else np.zeros(0, dtype=np.int64)
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
        # Non-finite parameters (only from a crafted stream) map to fixed indices on both sides.
        t = np.nan_to_num(scale_position(log_scale), nan=0.0, posinf=SCALE_LEVELS - 1, neginf=0.0)
        index = _table_index(t)
        if y_flat is not None:
            amb = np.flatnonzero(_ambiguous(t))
            collected.update(zip(pos[amb].tolist(), index[amb].tolist(), strict=True))
            symbols = np.rint(y_flat[pos] - mean).astype(np.int64)
            _code_by_index(coder, model._y_models, model.tables.y_pmfs, index, symbols)
        else:
            hit = np.flatnonzero(np.isin(pos, hint_pos, assume_unique=True))
            if hit.size:
                index[hit] = [hints[p] for p in pos[hit].tolist()]
            symbols = _code_by_index(coder, model._y_models, model.tables.y_pmfs, index, None)
        y_hat[pos] = symbols.astype(np.float32) + mean
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


def encode(image: np.ndarray, nets: Networks, model: CodecModel) -> tuple[bytes, CodecInfo]:
    """uint8 (H, W, 3) RGB -> bitstream bytes."""
    start = time.perf_counter()
    height, width = image.shape[:2]
    if height * width > model.max_pixels:
        raise ValueError(f"image of {height}x{width} exceeds {model.max_pixels} pixels")
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
    _, symbols, hints = _progressive(nets, model, hp, y_coder, y[0], None)
    z_bytes, z_esc = z_coder.finish()
    y_bytes, y_esc = y_coder.finish()
    hint_bytes = _pack_hints(np.array(list(hints), dtype=np.int64), np.array(list(hints.values()), dtype=np.int64))
    stream = Bitstream(model.name, model.model_hash, height, width, z=z_bytes, y=y_bytes,
                       escapes=z_esc + y_esc + np.uint32(len(z_esc) // 4).tobytes(), hints=hint_bytes)
    data = stream.to_bytes()
    info = CodecInfo(bits=8 * len(data), num_pixels=height * width, hints=len(hints),
                     escapes=(len(z_esc) + len(y_esc)) // 4, seconds=time.perf_counter() - start, symbols=symbols)
    return data, info


def check_stream(stream: Bitstream, model: CodecModel) -> None:
    """Refuse streams this model cannot decode, with the reason."""
    # The hash (of the weights) is the identity; the name may differ, e.g. the TorchScript export of the
    # same checkpoint served under another name decodes streams of the ONNX one.
    if stream.model_hash != model.model_hash:
        raise BitstreamError(
            "model", f"bitstream was made by model {stream.model_name!r} (hash {stream.model_hash.hex()}), "
            f"not {model.name!r} (hash {model.model_hash.hex()})")
    if stream.height == 0 or stream.width == 0 or stream.height * stream.width > model.max_pixels:
        raise BitstreamError("corrupted", f"bitstream announces an image of {stream.height}x{stream.width}")


def decode(data: bytes, nets: Networks, model: CodecModel) -> tuple[np.ndarray, CodecInfo]:
    """Bitstream bytes -> uint8 (H, W, 3). Raises BitstreamError for streams it cannot decode."""
    start = time.perf_counter()
    stream = Bitstream.parse(data)
    check_stream(stream, model)
    hp_h = -(-stream.height // PAD_MULTIPLE) * PAD_MULTIPLE // 16
    hp_w = -(-stream.width // PAD_MULTIPLE) * PAD_MULTIPLE // 16
    assert hp_h % LATENT_MULTIPLE == 0 and hp_w % LATENT_MULTIPLE == 0
    esc = stream.escapes
    if len(esc) < 4 or len(esc) % 4:
        raise BitstreamError("corrupted", "escape substream has the wrong length")
    n_z_esc = int(np.frombuffer(esc[-4:], dtype="<u4")[0])
    if 4 * n_z_esc > len(esc) - 4:
        raise BitstreamError("corrupted", "escape substream has the wrong length")
    z_coder = _SymbolCoder(stream.z, esc[: 4 * n_z_esc])
    z_symbols = _code_z(z_coder, model, None, (model.N, hp_h // 4, hp_w // 4))
    zm = model.tables.z_mean.reshape(-1, 1, 1)
    z_hat = (z_symbols.astype(np.float32) + zm)[None]
    hp = _run(nets, "h_s", z_hat=z_hat)["hp"]
    hints = _unpack_hints(stream.hints, model.M * hp_h * hp_w)
    y_coder = _SymbolCoder(stream.y, esc[4 * n_z_esc: -4])
    y_hat, symbols, _ = _progressive(nets, model, hp, y_coder, None, hints)
    x_hat = _run(nets, "g_s", y_hat=y_hat)["x_hat"]
    image = to_uint8(x_hat, stream.height, stream.width)
    info = CodecInfo(bits=8 * len(data), num_pixels=stream.height * stream.width, hints=len(hints),
                     escapes=0, seconds=time.perf_counter() - start, symbols=symbols)
    return image, info
