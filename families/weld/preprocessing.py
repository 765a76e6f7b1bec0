"""Decoding of the real weld file formats and the preprocessing shared by training and serving.

One sample = arc video (.avi), post-weld photos (.jpg), audio (.flac) and a sensor log (.csv). Every
function here takes bytes (or a path) and returns float32 arrays in the model's layout:

    video   (T, 3, S, S)   T frames sampled uniformly over the clip, resized, ImageNet-normalised
    photos  (P, 3, S, S)   P photos (sorted by file name), resized, ImageNet-normalised

Frames and photos are resized keeping their aspect ratio (shorter side to S) and centre-cropped to S x S,
as the Hugging Face image processors do (`resize="shorter_side_crop"`); a 2000x900 photo keeps its
proportions. Parameters stored before that switch existed (manifests, checkpoints) read back as
`resize="squash"`, the plain S x S resize those models were trained with.
    audio   (L, M)         Kaldi-style log-mel fbank at 16 kHz (AST's layout: time x mel), AST-normalised
    sensors (N, 6)         the 6 numeric channels resampled to N steps, standardised with train statistics

Training (training/weld/data.py) and the service (service/families/weld/) both call `preprocess_sample`,
so the two can never drift apart. Errors raise `ModalityError`, which names the modality; an upload over
one of the `MediaLimits` (read from the file's header before anything is decoded) raises `MediaTooLarge`.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from math import ceil, gcd
from pathlib import Path
from typing import Any

import numpy as np

from families.images import upright_rgb

MODALITIES: tuple[str, ...] = ("video", "photos", "audio", "sensors")
SENSOR_COLUMNS: tuple[str, ...] = (
    "Pressure",
    "CO2 Weld Flow",
    "Feed",
    "Primary Weld Current",
    "Wire Consumed",
    "Secondary Weld Voltage",
)
CSV_HEADER: tuple[str, ...] = ("Date", "Time", "Part No", *SENSOR_COLUMNS, "Remarks")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUDIOSET_MEAN = -4.2677393  # AST's fbank normalisation (ASTFeatureExtractor defaults)
AUDIOSET_STD = 4.5689974

# Upload caps, checked from each file's header before it is decoded (the service answers 413). Each limit is
# the larger of a floor sized for real recordings of one weld (seconds to a minute; 2000x900 photos) and
# CAP_HEADROOM times what the model consumes, so a model with larger inputs gets larger caps.
CAP_HEADROOM = 16
PHOTO_MAX_PIXELS_FLOOR = 25_000_000  # per photo: a 25 Mpx camera frame, ~14x the dataset's 2000x900
VIDEO_MAX_FRAME_PIXELS_FLOOR = 3840 * 2160  # per frame: 4K UHD
VIDEO_MAX_FRAMES_FLOOR = 18_000  # 10 minutes at 30 fps
VIDEO_MAX_DECODED_PIXELS_FLOOR = 1_500_000_000  # frames x width x height: ~55 s of 720p at 30 fps
AUDIO_MAX_SECONDS_FLOOR = 600.0  # only the first seconds are read (see decode_audio); longer is no weld
AUDIO_MAX_CHANNELS = 8
AUDIO_RATE_RANGE = (4_000, 192_000)  # Hz; outside it the polyphase resampler's filter gets huge
SENSOR_MAX_ROWS_FLOOR = 50_000  # ~1.6 h at the logger's 8.6 Hz

# How frames and photos reach S x S: keep the aspect ratio and centre-crop (the HF processors' way), or the
# plain resize of models exported before the switch (what PreprocessParams.from_dict assumes when absent).
RESIZE_MODES: tuple[str, ...] = ("shorter_side_crop", "squash")
LEGACY_RESIZE = "squash"

Source = bytes | Path


class ModalityError(ValueError):
    """A modality is missing, unreadable or has the wrong shape; `modality` names it."""

    def __init__(self, modality: str, message: str) -> None:
        super().__init__(f"{modality}: {message}")
        self.modality = modality
        self.message = message


class MediaTooLarge(ModalityError):
    """An upload over a `MediaLimits` cap, found from its header before decoding; `limit` is the cap."""

    def __init__(self, modality: str, message: str, limit: float) -> None:
        super().__init__(modality, message)
        self.limit = limit


@dataclass(frozen=True)
class MediaLimits:
    """The largest upload of each modality decoded (see the *_FLOOR constants and CAP_HEADROOM)."""

    photo_pixels: int
    video_frame_pixels: int
    video_frames: int
    video_decoded_pixels: int
    audio_seconds: float
    sensor_rows: int


@dataclass
class PreprocessParams:
    """Everything preprocessing needs; stored in the checkpoint and in the manifest's `preprocessing`."""

    video_frames: int = 32
    video_size: int = 224
    num_photos: int = 5
    photo_size: int = 224
    audio_sample_rate: int = 16_000
    audio_mel_bins: int = 128
    audio_frames: int = 256
    audio_mean: float = AUDIOSET_MEAN
    audio_std: float = AUDIOSET_STD
    sensor_steps: int = 256
    sensor_mean: list[float] = field(default_factory=lambda: [0.0] * len(SENSOR_COLUMNS))
    sensor_std: list[float] = field(default_factory=lambda: [1.0] * len(SENSOR_COLUMNS))
    image_mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    image_std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    resize: str = "shorter_side_crop"  # one of RESIZE_MODES

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessParams:
        """Parameters as stored; without `resize` they predate it, so the model was trained on squashed images."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known.setdefault("resize", LEGACY_RESIZE)
        return cls(**known)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-sample tensor shape of each modality (no batch axis)."""
        return {
            "video": (self.video_frames, 3, self.video_size, self.video_size),
            "photos": (self.num_photos, 3, self.photo_size, self.photo_size),
            "audio": (self.audio_frames, self.audio_mel_bins),
            "sensors": (self.sensor_steps, len(SENSOR_COLUMNS)),
        }

    def audio_window_samples(self) -> int:
        """Samples at `audio_sample_rate` that the `audio_frames` Kaldi windows cover."""
        return KALDI_FRAME + KALDI_HOP * (self.audio_frames - 1)

    def limits(self) -> MediaLimits:
        frame_pixels = self.video_size * self.video_size
        return MediaLimits(
            photo_pixels=max(PHOTO_MAX_PIXELS_FLOOR, CAP_HEADROOM * self.photo_size * self.photo_size),
            video_frame_pixels=max(VIDEO_MAX_FRAME_PIXELS_FLOOR, CAP_HEADROOM * frame_pixels),
            video_frames=max(VIDEO_MAX_FRAMES_FLOOR, CAP_HEADROOM * self.video_frames),
            video_decoded_pixels=max(VIDEO_MAX_DECODED_PIXELS_FLOOR,
                                     CAP_HEADROOM * self.video_frames * frame_pixels),
            audio_seconds=max(AUDIO_MAX_SECONDS_FLOOR,
                              CAP_HEADROOM * self.audio_window_samples() / self.audio_sample_rate),
            sensor_rows=max(SENSOR_MAX_ROWS_FLOOR, CAP_HEADROOM * self.sensor_steps),
        )


def _read(source: Source) -> bytes:
    return source.read_bytes() if isinstance(source, Path) else source


def _normalise_rgb(rgb: np.ndarray, params: PreprocessParams) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, H, W) float32 normalised."""
    x = rgb.astype(np.float32) / 255.0
    x = (x - np.asarray(params.image_mean, np.float32)) / np.asarray(params.image_std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def shorter_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) with the shorter side `size` and the aspect ratio kept (transformers'
    `get_resize_output_image_size` with `shortest_edge`: the longer side is truncated, never below `size`)."""
    short, long = min(width, height), max(width, height)
    other = max(size, int(size * long / short))
    return (size, other) if width <= height else (other, size)


def _resize_rgb(rgb: np.ndarray, size: int, mode: str = "shorter_side_crop") -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3): shorter side to `size` then the centre `size` x `size` crop (the
    crop offsets of transformers' `center_crop`), or with `mode="squash"` a plain resize to the square."""
    from PIL import Image

    image = Image.fromarray(rgb)
    target = (size, size) if mode == "squash" else shorter_side_size(image.width, image.height, size)
    if image.size != target:
        image = image.resize(target, Image.Resampling.BILINEAR)
    if image.size != (size, size):
        left, top = (image.width - size) // 2, (image.height - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8)


# --- video -------------------------------------------------------------------------------------------

def frame_indices(total: int, count: int) -> np.ndarray:
    """`count` frame indices spread uniformly over a clip of `total` frames (repeats when it is shorter)."""
    if total <= 0:
        raise ValueError("empty clip")
    return np.linspace(0, total - 1, count).round().astype(np.int64)


class _DecodeBudget:
    """Counts decoded video pixels: a header can understate the size or length of what its packets hold."""

    def __init__(self, limits: MediaLimits) -> None:
        self.limits = limits
        self.pixels = 0

    def frame(self, width: int, height: int) -> None:
        if width * height > self.limits.video_frame_pixels:
            raise MediaTooLarge("video", f"a frame of {width}x{height} exceeds the limit of "
                                f"{self.limits.video_frame_pixels} pixels per frame", self.limits.video_frame_pixels)
        self.pixels += width * height
        if self.pixels > self.limits.video_decoded_pixels:
            raise MediaTooLarge("video", f"the clip holds more than {self.limits.video_decoded_pixels} pixels "
                                "(frames x width x height) to decode", self.limits.video_decoded_pixels)


def _check_video_header(frames: int, width: int, height: int, limits: MediaLimits) -> None:
    """413 from the container's stream header, before a frame is decoded (0 = not in the header)."""
    _DecodeBudget(limits).frame(width, height)
    if frames > limits.video_frames:
        raise MediaTooLarge("video", f"{frames} frames exceed the limit of {limits.video_frames}", limits.video_frames)
    if frames * width * height > limits.video_decoded_pixels:
        raise MediaTooLarge("video", f"{frames} frames of {width}x{height} exceed the limit of "
                            f"{limits.video_decoded_pixels} decoded pixels (frames x width x height)",
                            limits.video_decoded_pixels)


def _count_frames(data: bytes, limits: MediaLimits) -> int:
    """Frame count of a container whose header lacks one, by decoding once (within the limits)."""
    import av

    budget = _DecodeBudget(limits)
    total = 0
    with av.open(io.BytesIO(data), mode="r") as counting:
        for frame in counting.decode(video=0):
            budget.frame(frame.width, frame.height)
            total += 1
            if total > limits.video_frames:
                raise MediaTooLarge("video", f"more than {limits.video_frames} frames", limits.video_frames)
    return total


def decode_video(source: Source, params: PreprocessParams) -> np.ndarray:
    """Decode an .avi (any codec FFmpeg reads) -> (T, 3, S, S). `MediaTooLarge` when the header (or what
    decodes) exceeds `params.limits()`."""
    import av

    data = _read(source)
    if not data:
        raise ModalityError("video", "empty file")
    limits = params.limits()
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise ModalityError("video", "the file has no video stream")
            stream = container.streams.video[0]
            total = max(0, int(stream.frames or 0))
            _check_video_header(total, stream.codec_context.width, stream.codec_context.height, limits)
            if total == 0:  # container without a frame count: count by decoding once
                total = _count_frames(data, limits)
            if total <= 0:
                raise ModalityError("video", "the video has no frames")
            wanted = frame_indices(total, params.video_frames)
            kept: dict[int, np.ndarray] = {}
            targets = set(wanted.tolist())
            last = int(wanted.max())
            last_frame = None
            budget = _DecodeBudget(limits)
            for index, frame in enumerate(container.decode(stream)):
                budget.frame(frame.width, frame.height)
                if index in targets:
                    kept[index] = _resize_rgb(frame.to_ndarray(format="rgb24"), params.video_size, params.resize)
                    last_frame = kept[index]
                if index >= last:
                    break
    except ModalityError:
        raise
    except Exception as exc:  # noqa: BLE001 - any FFmpeg/PyAV failure means an unreadable upload
        raise ModalityError("video", f"cannot decode the video ({type(exc).__name__}: {exc})") from None
    if not kept:
        raise ModalityError("video", "no frame could be decoded")
    # A header that overstates the frame count: reuse the last decoded frame for the missing tail.
    frames = [kept.get(int(i), last_frame) for i in wanted]
    frames = [f if f is not None else last_frame for f in frames]
    return np.stack([_normalise_rgb(f, params) for f in frames]).astype(np.float32)


# --- photos ------------------------------------------------------------------------------------------

def decode_photo(data: bytes, params: PreprocessParams) -> np.ndarray:
    """One JPEG (or any image Pillow reads) -> (3, S, S); `MediaTooLarge` past `limits().photo_pixels`."""
    from PIL import Image

    limit = params.limits().photo_pixels
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            width, height = image.size
            if width * height > limit:
                raise MediaTooLarge("photos", f"a photo of {width}x{height} exceeds the limit of {limit} pixels",
                                    limit)
            rgb = upright_rgb(image)  # EXIF orientation applied, as the Hugging Face loaders do
    except ModalityError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own, larger cap, raised by open()
        raise MediaTooLarge("photos", f"{exc}; the limit is {limit} pixels", limit) from None
    except Exception as exc:  # noqa: BLE001 - unreadable or truncated
        raise ModalityError("photos", f"cannot decode a photo ({type(exc).__name__}: {exc})") from None
    return _normalise_rgb(_resize_rgb(rgb, params.photo_size, params.resize), params)


def decode_photos(sources: Sequence[Source], params: PreprocessParams, allow_fewer: bool = False) -> np.ndarray:
    """Exactly `num_photos` photos -> (P, 3, S, S). With `allow_fewer`, missing slots are zero (training's
    zero-fill policy); the service always requires all of them."""
    if len(sources) < params.num_photos and not allow_fewer:
        raise ModalityError("photos", f"expected {params.num_photos} photos, got {len(sources)}")
    if not sources:
        raise ModalityError("photos", "no photo given")
    out = np.zeros((params.num_photos, 3, params.photo_size, params.photo_size), np.float32)
    for slot, source in enumerate(list(sources)[: params.num_photos]):
        out[slot] = decode_photo(_read(source), params)
    return out


# --- audio -------------------------------------------------------------------------------------------

KALDI_FRAME, KALDI_HOP, KALDI_FFT, KALDI_PREEMPHASIS, KALDI_MEL_FLOOR = 400, 160, 512, 0.97, 1.192092955078125e-07


@lru_cache(maxsize=8)
def _fbank_tables(sample_rate: int, mel_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Window and mel filter bank of transformers' ASTFeatureExtractor (its numpy Kaldi path)."""
    from transformers import ASTFeatureExtractor

    extractor = ASTFeatureExtractor(sampling_rate=sample_rate, num_mel_bins=mel_bins)
    return np.asarray(extractor.window, np.float64), np.asarray(extractor.mel_filters, np.float64)


def kaldi_fbank(wave: np.ndarray, params: PreprocessParams) -> np.ndarray:
    """AST's Kaldi-compatible log-mel fbank, (L, M), normalised as ASTFeatureExtractor does.

    Same arithmetic as ASTFeatureExtractor without torchaudio (25 ms Hann-like window, 10 ms hop, DC
    removal, pre-emphasis 0.97, 512-point FFT, power, mel, log), vectorised over frames instead of a
    Python loop, and computing only the L frames AST keeps: ~10x faster on a few seconds of audio.
    """
    window, mel_filters = _fbank_tables(params.audio_sample_rate, params.audio_mel_bins)
    w = np.asarray(wave, np.float64)
    frames_total = 1 + (w.size - KALDI_FRAME) // KALDI_HOP
    keep = min(frames_total, params.audio_frames)
    index = np.arange(KALDI_FRAME)[None, :] + KALDI_HOP * np.arange(keep)[:, None]
    frames = w[index]
    frames = frames - frames.mean(axis=1, keepdims=True)
    emphasised = frames.copy()
    emphasised[:, 1:] -= KALDI_PREEMPHASIS * frames[:, :-1]
    emphasised[:, 0] *= 1 - KALDI_PREEMPHASIS
    spectrum = np.fft.rfft(emphasised * window, n=KALDI_FFT, axis=1).astype(np.complex64)
    power = np.abs(spectrum, dtype=np.float64) ** 2
    # einsum, not `@`: a (L x 257) x (257 x M) product is far too small for BLAS, whose thread pool costs
    # ~100x the arithmetic on a busy machine.
    mel = np.einsum("fk,km->fm", power, mel_filters, optimize=False)
    logmel = np.log(np.maximum(KALDI_MEL_FLOOR, mel)).astype(np.float32)
    out = np.zeros((params.audio_frames, params.audio_mel_bins), np.float32)  # zero-pad short clips (AST)
    out[:keep] = logmel
    return (out - params.audio_mean) / (params.audio_std * 2)


def resample_audio(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return wave
    from scipy.signal import resample_poly

    g = gcd(rate, target)
    return resample_poly(wave, target // g, rate // g).astype(np.float32)


def audio_features(wave: np.ndarray, rate: int, params: PreprocessParams) -> np.ndarray:
    """Mono or multi-channel waveform -> (L, M) normalised log-mel fbank (pads/truncates to L frames)."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 2:
        wave = wave.mean(axis=1)
    wave = resample_audio(wave, rate, params.audio_sample_rate)
    if wave.shape[0] < 400:  # one 25 ms Kaldi window at 16 kHz
        raise ModalityError("audio", f"audio too short ({wave.shape[0]} samples at {params.audio_sample_rate} Hz)")
    if not np.all(np.isfinite(wave)):
        raise ModalityError("audio", "audio contains NaN or infinite samples")
    return np.ascontiguousarray(kaldi_fbank(wave, params), dtype=np.float32)


RESAMPLE_HALF_TAPS = 10  # scipy's resample_poly filter: 2 * 10 * max(up, down) + 1 taps at the upsampled rate


def audio_read_frames(rate: int, params: PreprocessParams) -> int:
    """Input frames at `rate` that determine the features exactly: the `audio_frames` Kaldi windows at
    the target rate, plus the reach of the resampling filter past their end."""
    needed = params.audio_window_samples()
    target = params.audio_sample_rate
    if rate == target:
        return needed
    g = gcd(rate, target)
    up, down = target // g, rate // g
    return ceil(needed * down / up) + ceil(RESAMPLE_HALF_TAPS * max(up, down) / up) + 2


def _check_audio_header(frames: int, rate: int, channels: int, limits: MediaLimits) -> None:
    low, high = AUDIO_RATE_RANGE
    if not low <= rate <= high:
        raise ModalityError("audio", f"sample rate {rate} Hz is outside {low}..{high} Hz")
    if channels > AUDIO_MAX_CHANNELS:
        raise MediaTooLarge("audio", f"{channels} channels exceed the limit of {AUDIO_MAX_CHANNELS}",
                            AUDIO_MAX_CHANNELS)
    if frames / rate > limits.audio_seconds:
        raise MediaTooLarge("audio", f"{frames / rate:.0f} s of audio exceed the limit of {limits.audio_seconds:.0f} s",
                            limits.audio_seconds)


def decode_audio(source: Source, params: PreprocessParams) -> np.ndarray:
    """Decode a .flac (or .wav/.ogg, anything libsndfile reads) -> (L, M).

    The duration, rate and channels come from the header first (`MediaTooLarge` past the limits); then only
    the leading frames the features use are decoded (`audio_read_frames`), which gives the same features
    as decoding the whole file.
    """
    import soundfile as sf

    data = _read(source)
    if not data:
        raise ModalityError("audio", "empty file")
    try:
        with sf.SoundFile(io.BytesIO(data)) as sound:
            rate = int(sound.samplerate)
            _check_audio_header(max(0, sound.frames), rate, sound.channels, params.limits())
            wave = sound.read(frames=audio_read_frames(rate, params), dtype="float32", always_2d=False)
    except ModalityError:
        raise
    except Exception as exc:  # noqa: BLE001 - libsndfile raises several types for corrupt input
        raise ModalityError("audio", f"cannot decode the audio ({exc})") from None
    return audio_features(wave, rate, params)


# --- sensors -----------------------------------------------------------------------------------------

def _column_key(name: str) -> str:
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")  # blank or non-numeric cell: treated as a gap


def _fill_gaps(column: np.ndarray) -> np.ndarray:
    """Carry the previous reading forward over NaN gaps (and the first reading backward)."""
    valid = ~np.isnan(column)
    index = np.where(valid, np.arange(column.size), 0)
    np.maximum.accumulate(index, out=index)
    filled = column[index]
    first = int(np.argmax(valid))
    filled[:first] = column[first]
    return filled


def _too_many_rows(limit: int) -> MediaTooLarge:
    return MediaTooLarge("sensors", f"the CSV has more than {limit} rows (the limit)", limit)


def read_sensor_csv(source: Source, max_rows: int = SENSOR_MAX_ROWS_FLOOR) -> np.ndarray:
    """Sensor log -> (rows, 6) float64 raw values of Pressure .. Secondary Weld Voltage.

    `MediaTooLarge` past `max_rows` data rows: counted on the bytes first, and the parse stops there.
    """
    data = _read(source)
    if not data:
        raise ModalityError("sensors", "empty file")
    if max(data.count(b"\n"), data.count(b"\r")) > max_rows + 1:  # + the header; CRLF counts once
        raise _too_many_rows(max_rows)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ModalityError("sensors", "the CSV is not UTF-8 text") from None
    try:
        rows = list(itertools.islice(csv.reader(io.StringIO(text, newline="")), max_rows + 2))
    except csv.Error as exc:
        raise ModalityError("sensors", f"cannot parse the CSV ({exc})") from None
    if len(rows) > max_rows + 1:
        raise _too_many_rows(max_rows)
    if not rows:
        raise ModalityError("sensors", "the CSV has no header")
    by_key = {_column_key(name): i for i, name in enumerate(rows[0])}
    missing = [c for c in SENSOR_COLUMNS if _column_key(c) not in by_key]
    if missing:
        raise ModalityError("sensors", f"CSV lacks the column(s) {', '.join(missing)}")
    columns = [by_key[_column_key(c)] for c in SENSOR_COLUMNS]
    values = np.array([[_number(row[i]) if i < len(row) else np.nan for i in columns] for row in rows[1:]],
                      dtype=np.float64).reshape(-1, len(columns))
    values = values[~np.isnan(values).all(axis=1)]
    if len(values) < 2:
        raise ModalityError("sensors", f"CSV has {len(values)} usable rows; at least 2 are needed")
    empty = [c for c, j in zip(SENSOR_COLUMNS, range(values.shape[1]), strict=True) if np.isnan(values[:, j]).all()]
    if empty:
        raise ModalityError("sensors", f"column(s) {', '.join(empty)} hold no number")
    if not np.isfinite(values[~np.isnan(values)]).all():
        raise ModalityError("sensors", "the CSV holds infinite values")
    # Sporadic blanks in the logger output: carry the neighbouring value.
    return np.stack([_fill_gaps(values[:, j]) for j in range(values.shape[1])], axis=1)


def resample_sensors(raw: np.ndarray, steps: int) -> np.ndarray:
    """(rows, C) -> (steps, C) by linear interpolation over the row index."""
    rows = raw.shape[0]
    src = np.arange(rows, dtype=np.float64)
    dst = np.linspace(0.0, rows - 1.0, steps)
    return np.stack([np.interp(dst, src, raw[:, c]) for c in range(raw.shape[1])], axis=1)


def normalise_sensors(resampled: np.ndarray, params: PreprocessParams) -> np.ndarray:
    mean = np.asarray(params.sensor_mean, np.float64)
    std = np.maximum(np.asarray(params.sensor_std, np.float64), 1e-8)
    return ((resampled - mean) / std).astype(np.float32)


def decode_sensors(source: Source, params: PreprocessParams) -> np.ndarray:
    raw = read_sensor_csv(source, params.limits().sensor_rows)
    return normalise_sensors(resample_sensors(raw, params.sensor_steps), params)


# --- a whole sample ----------------------------------------------------------------------------------

@dataclass
class SampleFiles:
    """The raw files of one sample (bytes or paths); None/empty = the modality is absent."""

    video: Source | None = None
    photos: list[Source] = field(default_factory=list)
    audio: Source | None = None
    sensors: Source | None = None

    def missing(self) -> list[str]:
        absent = [m for m in ("video", "audio", "sensors") if getattr(self, m) is None]
        if not self.photos:
            absent.append("photos")
        return [m for m in MODALITIES if m in absent]


def preprocess_sample(files: SampleFiles, params: PreprocessParams,
                      checkpoint: Callable[[], None] | None = None,
                      optional: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """All four modalities of one sample, or ModalityError naming the first absent/unreadable one. An absent
    modality listed in `optional` is zeros instead (what training's zero-fill writes; the presence mask that
    goes with it is `files.missing()`).

    `checkpoint` is called before each modality (the service raises there once a request is abandoned).
    """
    absent = files.missing()
    for modality in absent:
        if modality not in optional:
            raise ModalityError(modality, "missing")
    shapes = params.shapes()
    decoders: dict[str, Callable[[], np.ndarray]] = {
        "video": lambda: decode_video(files.video, params),  # type: ignore[arg-type]
        "photos": lambda: decode_photos(files.photos, params),
        "audio": lambda: decode_audio(files.audio, params),  # type: ignore[arg-type]
        "sensors": lambda: decode_sensors(files.sensors, params),  # type: ignore[arg-type]
    }
    out = {}
    for modality, decode in decoders.items():
        if modality in absent:
            out[modality] = np.zeros(shapes[modality], np.float32)
            continue
        if checkpoint is not None:
            checkpoint()
        out[modality] = decode()
    return out


def check_finite(modality: str, array: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(array)):
        raise ModalityError(modality, "tensor contains NaN or infinite values")
    return array


def check_tensor(modality: str, value: Any, shape: tuple[int, ...]) -> np.ndarray:
    """One ready tensor (nested lists or an array) -> float32 array of `shape`; ModalityError otherwise."""
    if value is None:
        raise ModalityError(modality, "missing")
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ModalityError(modality, f"not a numeric tensor ({exc})") from None
    if array.shape != shape:
        raise ModalityError(modality, f"expected shape {list(shape)}, got {list(array.shape)}")
    return check_finite(modality, array)


def warm_up(params: PreprocessParams) -> None:
    """Import the decoders (scipy's resampler and Pillow's JPEG plugin too) and build the fbank tables once,
    so the first request pays for none of it: an import on a worker thread holds the GIL, stalling the loop."""
    import av  # noqa: F401
    import soundfile  # noqa: F401
    from PIL import Image

    rng = np.random.default_rng(0)
    wave = rng.standard_normal(params.audio_sample_rate // 10).astype(np.float32)
    audio_features(wave, params.audio_sample_rate, params)
    audio_features(wave, params.audio_sample_rate * 2, params)  # resampled: imports scipy.signal
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, "JPEG")
    decode_photo(buffer.getvalue(), params)
