"""The k-NN reference gallery of a served weld model version: shipped references + enrolled ones.

The shipped part is the version's `gallery.npz` asset (immutable). Enrolled references live in
`<state_dir>/enrolled.npz`, rewritten whole and atomically (temp file + fsync + rename) on every
enrolment: a crash at any instant leaves the old file or the new one, never a torn one. In memory the
gallery is an immutable `GallerySnapshot` swapped in one assignment, so a classification sees the old
or the new gallery, and the next request after an enrolment sees the new one.

Ids are held as Python strings (an object array) and stored as UTF-8 bytes + offsets (`ids_utf8`,
`ids_offsets`): a fixed-width numpy string array would pad every id to the longest one, and would drop
trailing NULs. Files with the older fixed-width `ids` array (shipped galleries) still load.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch

from families.storage import atomic_write_bytes

ENROLLED_FILE = "enrolled.npz"


@dataclass(frozen=True)
class GallerySnapshot:
    embeddings: torch.Tensor  # (N, D) on the serving device, as enrolled (the model's output: unit norm)
    unit_t: torch.Tensor  # (D, N) L2-normalised once and transposed (contiguous), for cosine search
    sq_norms: torch.Tensor  # (N,) squared norms, for euclidean search
    labels: torch.Tensor  # (N,) int64 on the serving device
    label_list: np.ndarray  # (N,) int64 on the host, for responses
    ids: np.ndarray  # (N,) object array of str
    shipped: int  # rows 0..shipped-1 come from the asset, the rest were enrolled

    @property
    def size(self) -> int:
        return int(self.embeddings.shape[0])

    def search(self, queries: np.ndarray, k: int, metric: str, num_classes: int):
        """Exact k-NN of `queries` in this snapshot (see knn.knn_search)."""
        from families.weld.knn import knn_search

        cosine = metric == "cosine"
        return knn_search(queries, self.unit_t if cosine else self.embeddings, self.labels, k, metric, num_classes,
                          refs_normalized=cosine, refs_transposed=cosine,
                          ref_sq_norms=self.sq_norms if metric == "euclidean" else None)


def _ids_array(ids: Iterable[object]) -> np.ndarray:
    """(N,) object array of Python str: each id costs its own length, not the longest one's."""
    strings = [str(i) for i in ids]
    out = np.empty(len(strings), dtype=object)
    out[:] = strings
    return out


def encode_ids(ids: Iterable[object]) -> tuple[np.ndarray, np.ndarray]:
    """(UTF-8 bytes of all ids concatenated, offsets (N + 1,)): id i is utf8[offsets[i]:offsets[i + 1]]."""
    encoded = [str(i).encode("utf-8") for i in ids]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    offsets[1:] = np.cumsum([len(e) for e in encoded], dtype=np.int64)
    return np.frombuffer(b"".join(encoded), np.uint8), offsets


def decode_ids(utf8: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    blob = np.asarray(utf8, np.uint8).tobytes()
    bounds = np.asarray(offsets, np.int64).tolist()
    if bounds[:1] != [0] or bounds[-1] != len(blob) or any(a > b for a, b in pairwise(bounds)):
        raise ValueError("inconsistent gallery ids: offsets do not split the id bytes")
    return _ids_array(blob[a:b].decode("utf-8") for a, b in pairwise(bounds))


def read_npz(source: Path | bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(embeddings float32 (N, D), labels int64 (N,), ids object array of str (N,)) from a gallery .npz."""
    handle = io.BytesIO(source) if isinstance(source, bytes) else source
    with np.load(handle, allow_pickle=False) as data:
        emb = np.asarray(data["embeddings"], np.float32)
        labels = np.asarray(data["labels"], np.int64)
        if "ids_utf8" in data:
            ids = decode_ids(data["ids_utf8"], data["ids_offsets"])
        else:  # fixed-width string array (galleries written by training, older enrolled files)
            ids = _ids_array(np.asarray(data["ids"]).astype(np.str_).tolist())
    if emb.ndim != 2 or labels.shape != (emb.shape[0],) or ids.shape != (emb.shape[0],):
        raise ValueError(f"inconsistent gallery arrays: embeddings {emb.shape}, labels {labels.shape}, "
                         f"ids {ids.shape}")
    return emb, labels, ids


def npz_bytes(emb: np.ndarray, labels: np.ndarray, ids: Iterable[object]) -> bytes:
    utf8, offsets = encode_ids(ids)
    buffer = io.BytesIO()
    np.savez(buffer, embeddings=np.asarray(emb, np.float32), labels=np.asarray(labels, np.int64),
             ids_utf8=utf8, ids_offsets=offsets)
    return buffer.getvalue()


class DuplicateIds(ValueError):
    def __init__(self, ids: list[str]) -> None:
        super().__init__(f"sample id(s) already in the gallery or repeated: {', '.join(ids[:10])}")
        self.ids = ids


class GalleryStore:
    def __init__(self, shipped: Path, state_dir: Path, device: str = "cpu", num_classes: int = 12) -> None:
        self.path = state_dir / ENROLLED_FILE
        self.device = device
        self.num_classes = num_classes
        self._lock = threading.Lock()
        self._base = read_npz(shipped)
        self._enrolled = read_npz(self.path) if self.path.is_file() else (
            np.zeros((0, self._base[0].shape[1]), np.float32), np.zeros(0, np.int64), _ids_array([]))
        self.snapshot = self._build()

    def _build(self) -> GallerySnapshot:
        emb = np.concatenate([self._base[0], self._enrolled[0]])
        labels = np.concatenate([self._base[1], self._enrolled[1]])
        ids = np.concatenate([self._base[2], self._enrolled[2]])
        emb_t = torch.from_numpy(emb).to(self.device)
        return GallerySnapshot(
            embeddings=emb_t, unit_t=torch.nn.functional.normalize(emb_t, dim=1).T.contiguous(),
            sq_norms=(emb_t * emb_t).sum(1),
            labels=torch.from_numpy(labels).to(self.device),
            label_list=labels, ids=ids, shipped=int(self._base[0].shape[0]),
        )

    @property
    def dim(self) -> int:
        return int(self._base[0].shape[1])

    def enroll(self, embeddings: np.ndarray, labels: list[int], ids: list[str]) -> GallerySnapshot:
        """Append references, persist atomically, then publish the new snapshot; returns it."""
        embeddings = np.asarray(embeddings, np.float32)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim or len(labels) != len(embeddings) \
                or len(ids) != len(embeddings):
            raise ValueError(f"enrol {embeddings.shape} embeddings with {len(labels)} labels and {len(ids)} ids; "
                             f"expected (n, {self.dim})")
        if any(not 0 <= int(label) < self.num_classes for label in labels):
            raise ValueError(f"labels must be class indices 0..{self.num_classes - 1}")
        with self._lock:
            known = set(self.snapshot.ids.tolist())
            seen: set[str] = set()
            duplicates = []
            for sample_id in ids:
                if sample_id in known or sample_id in seen:
                    duplicates.append(sample_id)
                seen.add(sample_id)
            if duplicates:
                raise DuplicateIds(duplicates)
            enrolled = (np.concatenate([self._enrolled[0], embeddings]),
                        np.concatenate([self._enrolled[1], np.asarray(labels, np.int64)]),
                        np.concatenate([self._enrolled[2], _ids_array(ids)]))
            atomic_write_bytes(self.path, npz_bytes(*enrolled))  # durable before anyone can see it
            self._enrolled = enrolled
            self.snapshot = self._build()
            return self.snapshot
