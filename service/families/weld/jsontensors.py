"""Weld tensor requests (application/json) decoded straight into numpy, shapes checked on the raw bytes.

Parsed the usual way, a JSON body of nested lists becomes one Python float per number (~32 bytes each, 16x
the text of `0,0,...`) before its shape can even be looked at. Here each tensor -- the value of a modality
key inside a sample object, `{"samples": [{"video": [[...]], ...}]}` -- is cut out of the body and
checked against the manifest shape from its brackets and commas alone (numpy over the bytes: no Python
object per number), and only a tensor of the right shape is parsed, by numpy, into float32. What is left
(keys, ids, labels: the "skeleton", at most `MAX_SKELETON_BYTES`) is validated by pydantic as usual, with
a placeholder string where each tensor was.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from math import prod

import numpy as np

from families.weld.preprocessing import ModalityError, check_finite, check_tensor
from service.errors import BadRequest, InvalidInput, PayloadTooLarge

MAX_SKELETON_BYTES = 1 << 20  # everything but the tensors: 64 samples of ids and labels fit many times over
_STRUCTURE = re.compile(rb'["\[\]{}]')
_SAMPLE_LEVEL = ["{", "[", "{"]  # containers around a tensor value: body, samples, sample
_OPEN, _CLOSE, _COMMA, _QUOTE, _BACKSLASH = (ord(c) for c in '[],"\\')
# Bytes a nested list of JSON numbers may hold (NaN/Infinity too: they are rejected later, by name).
_TENSOR_BYTES = np.zeros(256, bool)
_TENSOR_BYTES[np.frombuffer(b"0123456789+-.eE \t\r\n,[]NaInfity", np.uint8)] = True
_BRACKETS_TO_SPACES = bytes.maketrans(b"[]", b"  ")


def sample_error(index: int, modality: str, message: str) -> InvalidInput:
    return InvalidInput(f"sample {index}: {modality}: {message}", details={"sample": index, "modality": modality})


@dataclass(frozen=True)
class TensorSpan:
    """A tensor's text: raw[start:end + 1] is a nested list already checked to have `shape`."""

    modality: str
    start: int
    end: int
    shape: tuple[int, ...]

    def parse(self, raw: bytes) -> np.ndarray:
        """The numbers as float32 (parsed as float64 first, like a JSON parser, then rounded)."""
        text = raw[self.start:self.end + 1].translate(_BRACKETS_TO_SPACES)
        try:
            values = np.fromstring(text, dtype=np.float64, sep=",")
        except ValueError:  # an element that is no number
            values = np.zeros(0)
        if values.size != prod(self.shape):
            raise ModalityError(self.modality, f"not a numeric tensor: an element of the expected shape "
                                f"{list(self.shape)} is not a number")
        return check_finite(self.modality, values.astype(np.float32).reshape(self.shape))


@dataclass
class TensorBody:
    """A weld JSON body split into its skeleton (for pydantic) and its tensors (for numpy)."""

    raw: bytes
    skeleton: bytes
    spans: dict[str, TensorSpan]  # placeholder string in the skeleton -> the tensor it replaces

    def tensor(self, value: object, modality: str, shape: tuple[int, ...]) -> np.ndarray:
        """The float32 array of a sample field as pydantic saw it in the skeleton; ModalityError if bad."""
        if isinstance(value, str) and value in self.spans:
            return self.spans[value].parse(self.raw)
        return check_tensor(modality, value, shape)  # null, or a (small) value that was not cut out


def _string_end(raw: bytes, start: int, limit: int) -> int:
    """Index of the quote closing the JSON string that opens at raw[start] (413 past `limit` bytes)."""
    end = raw.find(b'"', start + 1)
    while end != -1:
        if end - start > limit:
            raise _too_large()
        backslashes = 0
        while raw[end - 1 - backslashes] == _BACKSLASH:
            backslashes += 1
        if backslashes % 2 == 0:
            return end
        end = raw.find(b'"', end + 1)
    raise BadRequest("request body is not valid JSON: unterminated string")


def _brackets(window: np.ndarray, max_opens: int, modality: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """For the list opening at window[0], from bracket positions only: the position of each list it holds
    (itself first), their nesting levels (1 = itself), the position of the bracket that follows each one
    (a leaf's closing bracket), and the position of its own closing bracket."""
    # In valid JSON only a few closing brackets of the enclosing containers follow before the next quote.
    if int(np.count_nonzero(window == _OPEN)) > max_opens or int(np.count_nonzero(window == _CLOSE)) > max_opens + 4:
        raise ModalityError(modality, f"not a nested list of at most {max_opens} lists (the expected shape's)")
    opens, closes = np.flatnonzero(window == _OPEN), np.flatnonzero(window == _CLOSE)
    order = np.argsort(np.concatenate([opens, closes]), kind="stable")
    positions = np.concatenate([opens, closes])[order]
    is_open = order < opens.size
    depth = np.cumsum(np.where(is_open, 1, -1))
    closed = np.flatnonzero(depth == 0)
    if closed.size == 0:
        raise ModalityError(modality, "not a numeric tensor (an unterminated list or a string inside it)")
    last = int(closed[0])
    index = np.flatnonzero(is_open[:last + 1])
    return positions[index], depth[index], positions[index + 1], int(positions[last])


def _commas(window: np.ndarray, start: int, stop: int) -> int:
    return int(np.count_nonzero(window[start:stop] == _COMMA))


def _first_dims(open_at: np.ndarray, levels: np.ndarray, after: np.ndarray, window: np.ndarray) -> list[int]:
    """The shape along the first element of each level (what numpy would report for a regular list)."""
    rank = int(levels.max())
    dims = []
    for level in range(1, rank):
        first = open_at[levels == level][0]
        later = open_at[(levels <= level) & (open_at > first)]  # the first list's siblings and cousins
        bound = later[0] if later.size else window.size
        dims.append(int(np.count_nonzero(open_at[levels == level + 1] < bound)))
    leaf = int(np.flatnonzero(levels == rank)[0])
    dims.append(_commas(window, int(open_at[leaf]), int(after[leaf])) + 1)
    return dims


def _check_nested(window: np.ndarray, shape: tuple[int, ...], modality: str) -> int:
    """Index of the bracket closing the nested list that opens at window[0], once its brackets and commas
    show that it has exactly `shape`; ModalityError (naming the shape it has) otherwise."""
    open_at, levels, after, end = _brackets(window, sum(prod(shape[:k]) for k in range(len(shape))), modality)
    got = _first_dims(open_at, levels, after, window)
    if tuple(got) != shape:
        raise ModalityError(modality, f"expected shape {list(shape)}, got {got}")
    ragged = ModalityError(modality, f"expected shape {list(shape)}, got ragged nested lists (or numbers mixed "
                                     "with lists)")
    for level in range(1, len(shape)):
        parents, children = open_at[levels == level], open_at[levels == level + 1]
        counts = np.bincount(np.searchsorted(parents, children) - 1, minlength=parents.size)
        if counts.min() != shape[level - 1] or counts.max() != shape[level - 1]:
            raise ragged
    # n numbers in regular lists are separated by exactly n - 1 commas; then each leaf must hold its share.
    if _commas(window, 0, end + 1) != prod(shape) - 1:
        raise ragged
    comma_at = np.flatnonzero(window[:end + 1] == _COMMA)
    leaf = levels == len(shape)
    inside = np.searchsorted(comma_at, after[leaf]) - np.searchsorted(comma_at, open_at[leaf])
    if inside.min() != shape[-1] - 1 or inside.max() != shape[-1] - 1:
        raise ragged
    return end


def locate_tensor(raw: bytes, start: int, modality: str, shape: tuple[int, ...]) -> TensorSpan:
    """The nested list opening at raw[start], checked to have `shape` before any number is parsed."""
    stop = raw.find(b'"', start)  # a tensor holds no string: the next quote lies past its end
    window = np.frombuffer(raw, np.uint8, count=(len(raw) if stop == -1 else stop) - start, offset=start)
    end = _check_nested(window, shape, modality)
    bad = np.flatnonzero(~_TENSOR_BYTES[window[:end + 1]])
    if bad.size:
        raise ModalityError(modality, f"not a numeric tensor (found {chr(window[bad[0]])!r})")
    return TensorSpan(modality, start, start + end, shape)


def _too_large() -> PayloadTooLarge:
    return PayloadTooLarge(f"the JSON outside the tensors exceeds {MAX_SKELETON_BYTES} bytes (ids, labels and "
                           "keys); tensors go in the modality fields of each sample",
                           details={"limit": MAX_SKELETON_BYTES})


def split_tensor_body(raw: bytes, shapes: dict[str, tuple[int, ...]]) -> TensorBody:
    """Cut each modality tensor out of a weld JSON body, checking its shape on the way.

    400 for malformed JSON found while scanning, 413 when the skeleton exceeds MAX_SKELETON_BYTES, 422
    (naming the sample and modality) for a tensor of the wrong shape or with something other than numbers.
    """
    nonce = secrets.token_hex(8)
    pieces: list[bytes] = []
    spans: dict[str, TensorSpan] = {}
    stack: list[str] = []
    key = b""
    sample = -1
    pos = piece_start = 0
    cut = 0  # bytes of raw taken by tensors so far
    while True:
        budget = MAX_SKELETON_BYTES - (pos - cut)
        match = _STRUCTURE.search(raw, pos, min(len(raw), pos + budget + 1))
        if match is None:
            if len(raw) - pos > budget:
                raise _too_large()
            break
        at = match.start()
        char = raw[at:at + 1].decode()
        if char == '"':
            end = _string_end(raw, at, budget)
            key = raw[at + 1:end]
            pos = end + 1
        elif char == "[" and stack == _SAMPLE_LEVEL and key.decode(errors="replace") in shapes:
            modality = key.decode()
            try:
                span = locate_tensor(raw, at, modality, shapes[modality])
            except ModalityError as exc:
                raise sample_error(sample, exc.modality, exc.message) from None
            placeholder = f"@tensor:{nonce}:{len(spans)}"
            spans[placeholder] = span
            pieces += [raw[piece_start:at], f'"{placeholder}"'.encode()]
            cut += span.end + 1 - at
            pos = piece_start = span.end + 1
        elif char in "[{":
            stack.append(char)
            if stack == _SAMPLE_LEVEL:
                sample += 1
            pos = at + 1
        else:
            if not stack or stack.pop() != ("[" if char == "]" else "{"):
                raise BadRequest(f"request body is not valid JSON: unbalanced {char!r} at byte {at}")
            pos = at + 1
        if pos - cut > MAX_SKELETON_BYTES:
            raise _too_large()
    pieces.append(raw[piece_start:])
    return TensorBody(raw=raw, skeleton=b"".join(pieces), spans=spans)
