"""The k-NN reference gallery of a served weld model version: shipped references + enrolled ones.

The shipped part is the version's `gallery.npz` asset (immutable). Enrolled references live in a database
shared by every process serving the version (`gallery_db`: SQLite by default, PostgreSQL when configured).
In memory the gallery is an immutable `GallerySnapshot` swapped in one assignment, so a classification
sees the old or the new gallery. Reading `GalleryStore.snapshot` checks the database for rows enrolled by
any process at most every `refresh_s` (default 50 ms) and appends only those: an enrolment acknowledged by
one process is seen by every classification that starts `refresh_s` later on any other (the staleness
bound; docs/scaling.md has the measured figure), and at once by the process that enrolled it.

A gallery of the earlier file format (`<version state>/enrolled.npz`) is imported on first start, in one
transaction, then renamed `enrolled.npz.migrated`; a start interrupted between the two imports nothing twice.

A store given `faiss_min` (the service's `SERVICE_WELD_FAISS_MIN`) searches a snapshot of at least that many
references, in its manifest metric, through an exact FAISS index (faiss_index.py) built with the snapshot;
without faiss installed, or on a GPU, the search stays the exact torch one.

Ids are held as Python strings (an object array) and stored in .npz files as UTF-8 bytes + offsets
(`ids_utf8`, `ids_offsets`): a fixed-width numpy string array would pad every id to the longest one, and
would drop trailing NULs. Files with the older fixed-width `ids` array (shipped galleries) still load.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch

from families.weld import faiss_index
from families.weld.faiss_index import FaissIndex
from families.weld.gallery_db import DuplicateIds, GalleryDB, GalleryKey, GalleryUnavailable, Row

__all__ = ["ENROLLED_FILE", "DuplicateIds", "GalleryKey", "GallerySnapshot", "GalleryStore", "GalleryUnavailable",
           "migrate_enrolled_npz", "npz_bytes", "read_npz"]

ENROLLED_FILE = "enrolled.npz"  # the earlier per-version file gallery, migrated into the database
MIGRATED_SUFFIX = ".migrated"
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GallerySnapshot:
    embeddings: torch.Tensor  # (N, D) on the serving device, as enrolled (the model's output: unit norm)
    unit_t: torch.Tensor  # (D, N) L2-normalised once and transposed (contiguous), for cosine search
    sq_norms: torch.Tensor  # (N,) squared norms, for euclidean search
    labels: torch.Tensor  # (N,) int64 on the serving device
    label_list: np.ndarray  # (N,) int64 on the host, for responses
    ids: np.ndarray  # (N,) object array of str
    shipped: int  # rows 0..shipped-1 come from the asset, the rest were enrolled
    index: FaissIndex | None = None  # an exact FAISS index of `embeddings` for `index.metric` (large galleries)

    @property
    def size(self) -> int:
        return int(self.embeddings.shape[0])

    def search(self, queries: np.ndarray, k: int, metric: str, num_classes: int):
        """Exact k-NN of `queries` in this snapshot (see knn.knn_search), through `index` for its metric."""
        from families.weld.knn import knn_search, vote

        if self.index is not None and self.index.metric == metric:
            distances, indices = self.index.search(np.asarray(queries, np.float32), k)
            return vote(torch.from_numpy(indices), torch.from_numpy(distances), self.labels.cpu(), num_classes)
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


def migrate_enrolled_npz(db: GalleryDB, key: GalleryKey, state_dir: Path, dim: int) -> int:
    """Import `<state_dir>/enrolled.npz` into `db` (one transaction; ids already there are kept as they are),
    then rename it `*.migrated`. Idempotent, and safe when several processes start at once. Returns the rows
    the file held (0 when there is none)."""
    path = state_dir / ENROLLED_FILE
    if not path.is_file():
        return 0
    emb, labels, ids = read_npz(path)
    if emb.shape[1] != dim:
        raise ValueError(f"{path}: embeddings of dimension {emb.shape[1]}, the model's are {dim}")
    db.insert(key, [(str(i), int(label), row.tobytes()) for i, label, row in zip(ids, labels, emb, strict=True)],
              skip_existing=True)
    try:
        os.replace(path, path.with_name(path.name + MIGRATED_SUFFIX))
    except FileNotFoundError:  # another process migrated it meanwhile
        return len(ids)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename is durable: a restart does not import again (it would be harmless)
    finally:
        os.close(dir_fd)
    _log.info("migrated %d enrolled weld references from %s into %s", len(ids), path, db.url)
    return len(ids)


class GalleryStore:
    """Shipped references + the enrolled rows of `key` in `db`, kept current per `refresh_s`."""

    def __init__(self, shipped: Path, db: GalleryDB, key: GalleryKey, device: str = "cpu", num_classes: int = 12,
                 refresh_s: float = 0.05, legacy_dir: Path | None = None, faiss_min: int = 0,
                 metric: str = "cosine") -> None:
        self.db = db
        self.key = key
        self.device = device
        self.num_classes = num_classes
        self.refresh_s = refresh_s
        self.metric = metric
        self.faiss_min = faiss_min
        if faiss_min and not faiss_index.available():
            _log.warning("SERVICE_WELD_FAISS_MIN is set but faiss is not installed (pip install .[faiss]): "
                         "weld gallery %s/%s is searched exactly with torch", key.model, key.version)
        self._base = read_npz(shipped)
        self._shipped_ids = frozenset(self._base[2].tolist())
        if legacy_dir is not None:
            migrate_enrolled_npz(db, key, legacy_dir, self.dim)
        self._refresh_lock = threading.Lock()
        self._closed = False
        self._seq = 0  # the highest seq folded into the snapshot
        self._checked = float("-inf")  # monotonic time the last check started
        self._inflight: asyncio.Task[None] | None = None  # a check running for `current`
        self._enrolled: tuple[np.ndarray, np.ndarray, np.ndarray] = (
            np.zeros((0, self.dim), np.float32), np.zeros(0, np.int64), _ids_array([]))
        self._enrolled_ids: set[str] = set()
        self._snapshot = self._build()
        self.refresh(force=True)

    @property
    def dim(self) -> int:
        return int(self._base[0].shape[1])

    @property
    def snapshot(self) -> GallerySnapshot:
        """The current gallery, after checking the database (on this thread) when the last check is `refresh_s`
        old. A database that does not answer leaves the last snapshot in service (logged; checked again
        `refresh_s` later). On an event loop use `current`."""
        if time.monotonic() - self._checked >= self.refresh_s:
            self._refresh_logged()
        return self._snapshot

    async def current(self) -> GallerySnapshot:
        """`snapshot` for a request on an event loop: the database is asked on a worker thread (never on the
        loop), and a request waits at most `refresh_s` for a check in flight, so a slow or unreachable database
        delays no request longer than that (the last snapshot serves meanwhile)."""
        loop = asyncio.get_running_loop()
        if self._inflight is None and time.monotonic() - self._checked >= self.refresh_s:
            self._inflight = loop.create_task(asyncio.to_thread(self._refresh_logged))
            self._inflight.add_done_callback(self._refresh_done)
        inflight = self._inflight
        if inflight is not None and inflight.get_loop() is loop:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(inflight), self.refresh_s)
        return self._snapshot

    def _refresh_logged(self) -> None:
        try:
            self.refresh()
        except GalleryUnavailable as exc:
            _log.warning("weld gallery %s/%s not refreshed: %s", self.key.model, self.key.version, exc)

    def _refresh_done(self, task: asyncio.Task[None]) -> None:
        self._inflight = None
        if not task.cancelled() and task.exception() is not None:
            _log.error("weld gallery %s/%s: refresh failed", self.key.model, self.key.version,
                       exc_info=task.exception())

    def refresh(self, force: bool = False) -> GallerySnapshot:
        """Fold the rows committed after the last seen seq into a new snapshot (the change feed)."""
        with self._refresh_lock:
            started = time.monotonic()
            if self._closed or (not force and started - self._checked < self.refresh_s):
                return self._snapshot  # closed (a retired version): the last snapshot, no database query
            self._checked = started  # a failing database is retried per refresh_s, not per request
            rows = self.db.rows_after(self.key, self._seq)
            if rows:
                self._append(rows)
            return self._snapshot

    def _append(self, rows: list[Row]) -> None:
        width = self.dim * 4
        good = [r for r in rows if len(r[3]) == width and 0 <= r[2] < self.num_classes]
        if len(good) != len(rows):  # written by something else than `enroll`: skipped, never served half-read
            _log.error("weld gallery %s/%s: %d row(s) with a wrong embedding size or label skipped",
                       self.key.model, self.key.version, len(rows) - len(good))
        self._seq = rows[-1][0]
        if not good:
            return
        emb = np.frombuffer(b"".join(r[3] for r in good), np.float32).reshape(len(good), self.dim)
        self._enrolled = (np.concatenate([self._enrolled[0], emb]),
                          np.concatenate([self._enrolled[1], np.array([r[2] for r in good], np.int64)]),
                          np.concatenate([self._enrolled[2], _ids_array(r[1] for r in good)]))
        self._enrolled_ids.update(r[1] for r in good)
        self._snapshot = self._build()

    def _build(self) -> GallerySnapshot:
        emb = np.concatenate([self._base[0], self._enrolled[0]])
        labels = np.concatenate([self._base[1], self._enrolled[1]])
        ids = np.concatenate([self._base[2], self._enrolled[2]])
        emb_t = torch.from_numpy(emb).to(self.device)
        return GallerySnapshot(
            embeddings=emb_t, unit_t=torch.nn.functional.normalize(emb_t, dim=1).T.contiguous(),
            sq_norms=(emb_t * emb_t).sum(1),
            labels=torch.from_numpy(labels).to(self.device),
            label_list=labels, ids=ids, shipped=int(self._base[0].shape[0]), index=self._index(emb),
        )

    def _index(self, emb: np.ndarray) -> FaissIndex | None:
        """The FAISS index of a gallery of at least `faiss_min` references (CPU serving, faiss installed)."""
        if not self.faiss_min or len(emb) < self.faiss_min or not self.device.startswith("cpu") \
                or not faiss_index.available():
            return None
        return FaissIndex(emb, self.metric)

    @property
    def uses_faiss(self) -> bool:
        return self._snapshot.index is not None

    def enroll(self, embeddings: np.ndarray, labels: list[int], ids: list[str]) -> GallerySnapshot:
        """Commit the references (all or none; DuplicateIds when an id is shipped, repeated or enrolled by any
        process), then return the snapshot that holds them: the caller acknowledges only after the commit."""
        embeddings = np.asarray(embeddings, np.float32)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim or len(labels) != len(embeddings) \
                or len(ids) != len(embeddings):
            raise ValueError(f"enrol {embeddings.shape} embeddings with {len(labels)} labels and {len(ids)} ids; "
                             f"expected (n, {self.dim})")
        if any(not 0 <= int(label) < self.num_classes for label in labels):
            raise ValueError(f"labels must be class indices 0..{self.num_classes - 1}")
        seen: set[str] = set()
        duplicates = []
        for sample_id in ids:
            if sample_id in self._shipped_ids or sample_id in self._enrolled_ids or sample_id in seen:
                duplicates.append(sample_id)
            seen.add(sample_id)
        if duplicates:
            raise DuplicateIds(duplicates)
        rows = [(sample_id, int(label), np.ascontiguousarray(row).tobytes())
                for sample_id, label, row in zip(ids, labels, embeddings, strict=True)]
        self.db.insert(self.key, rows)  # other processes' duplicates: the database's check and UNIQUE
        try:
            return self.refresh(force=True)
        except GalleryUnavailable as exc:  # committed, so acknowledged; the next check picks the rows up
            _log.warning("weld gallery %s/%s: enrolled, not yet refreshed: %s", self.key.model, self.key.version, exc)
            return self._snapshot

    def close(self) -> None:
        """Close the database connections, after a refresh in progress; the last snapshot stays readable and
        an enrolment afterwards raises GalleryUnavailable (retry-safe: the next request reaches the new version)."""
        with self._refresh_lock:
            self._closed = True
        self.db.close()
