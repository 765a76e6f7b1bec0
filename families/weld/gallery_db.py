"""Where enrolled weld references live: one table, in embedded SQLite (default) or PostgreSQL.

Rows are keyed by (model, version, sample_id), UNIQUE, and carry a `seq` that only grows: a reader keeps the
last seq it saw and asks only for the rows after it (`rows_after`), which is both the per-request version
check and the change feed. Writers are serialised (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: a transaction-level
advisory lock taken before the rows get their seq), so seq order is commit order and a reader that saw seq n
can never later find a committed row below n. An insert is one transaction: all the rows of a call or none;
it returns only after the commit is durable (SQLite: WAL + synchronous=FULL; PostgreSQL: its commit).

Every call is bounded: SQLite waits at most `timeout_s` for another writer (busy_timeout), PostgreSQL has
connect, statement and lock timeouts. A database that cannot answer raises `GalleryUnavailable`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

SQLITE_FILE = "gallery.sqlite3"
_ID_CHUNK = 500  # ids per `IN (...)` query, well under SQLite's bound-parameter limit
_PG_LOCK_KEY = 0x57454C44  # "WELD": the advisory lock that serialises gallery writers

Row = tuple[int, str, int, bytes]  # (seq, sample_id, label, float32 embedding bytes)
NewRow = tuple[str, int, bytes]  # (sample_id, label, float32 embedding bytes)


@dataclass(frozen=True)
class GalleryKey:
    model: str
    version: str


class DuplicateIds(ValueError):
    def __init__(self, ids: list[str]) -> None:
        super().__init__(f"sample id(s) already in the gallery or repeated: {', '.join(ids[:10])}")
        self.ids = ids


class GalleryUnavailable(RuntimeError):
    """The gallery database did not answer in time (locked, unreachable, timed out)."""


class GalleryDB(Protocol):
    url: str

    def insert(self, key: GalleryKey, rows: Sequence[NewRow], skip_existing: bool = False) -> None: ...

    def rows_after(self, key: GalleryKey, seq: int) -> list[Row]: ...

    def close(self) -> None: ...


def open_gallery_db(url: str, state_dir: Path, timeout_s: float = 5.0) -> GalleryDB:
    """"" -> SQLite at `<state_dir>/gallery.sqlite3`; `sqlite:///<path>`; `postgresql://...` (psycopg 3)."""
    if not url:
        return SQLiteGallery(state_dir / SQLITE_FILE, timeout_s)
    if url.startswith("sqlite:///"):
        return SQLiteGallery(Path(url.removeprefix("sqlite://")), timeout_s)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresGallery(url, timeout_s)
    raise ValueError(f"gallery url {url!r}: expected empty (SQLite in the state folder), sqlite:///<path> or "
                     "postgresql://...")


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _ID_CHUNK):
        yield items[start:start + _ID_CHUNK]


# ---- SQLite ------------------------------------------------------------------------------------------

_SQLITE_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS weld_gallery (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        model TEXT NOT NULL, version TEXT NOT NULL, sample_id TEXT NOT NULL,
        label INTEGER NOT NULL, embedding BLOB NOT NULL,
        UNIQUE (model, version, sample_id))""",
    "CREATE INDEX IF NOT EXISTS weld_gallery_feed ON weld_gallery (model, version, seq)",
)


class _CommitFailed(Exception):
    """The COMMIT of a gallery transaction raised; the transaction was rolled back."""


class SQLiteGallery:
    """One file shared by every process of a machine. Two connections: readers never wait for a writer (WAL),
    so the per-request check stays cheap while another process commits."""

    def __init__(self, path: Path, timeout_s: float = 5.0) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        self.timeout_s = timeout_s
        path.parent.mkdir(parents=True, exist_ok=True)
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._closed = False
        self._writer: sqlite3.Connection | None = None  # None: opened again on the next write
        try:
            with self._transaction() as conn:
                for statement in _SQLITE_SCHEMA:
                    conn.execute(statement)
            self._reader = self._connect()
        except (sqlite3.OperationalError, _CommitFailed) as exc:
            raise GalleryUnavailable(f"gallery database {path}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")  # the commit (and so the ack) survives power loss, not only kill -9
        return conn

    def _check_open(self) -> None:
        if self._closed:  # a request that outlived its model version: retry-safe, the next one is served anew
            raise GalleryUnavailable(f"gallery database {self.path}: closed (its model version was unloaded)")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._check_open()
        if self._writer is None:
            self._writer = self._connect()
        conn = self._writer
        conn.execute("BEGIN IMMEDIATE")  # take the write lock now: the duplicate check and the insert agree
        try:
            yield conn
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:  # disk full, I/O error, a deferred constraint: nothing was committed
                raise _CommitFailed(f"commit failed, rolled back: {exc}") from exc
        except BaseException:
            # Any failure, the COMMIT's included: a connection left inside the transaction would hold the write
            # lock, and every later enrolment of every process would fail until a restart.
            self._abort(conn)
            raise

    def _abort(self, conn: sqlite3.Connection) -> None:
        """Roll back; if even that fails, close the connection (which releases the lock): the next write opens
        a new one."""
        if not conn.in_transaction:
            return
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            conn.close()
            self._writer = None

    def insert(self, key: GalleryKey, rows: Sequence[NewRow], skip_existing: bool = False) -> None:
        ids = [r[0] for r in rows]
        verb = "INSERT OR IGNORE" if skip_existing else "INSERT"
        with self._write_lock:
            try:
                with self._transaction() as conn:
                    if not skip_existing:
                        existing = [found for chunk in _chunks(ids) for (found,) in conn.execute(
                            "SELECT sample_id FROM weld_gallery WHERE model = ? AND version = ? AND sample_id IN "
                            f"({','.join('?' * len(chunk))})", (key.model, key.version, *chunk))]
                        if existing:
                            raise DuplicateIds(existing)
                    conn.executemany(f"{verb} INTO weld_gallery (model, version, sample_id, label, embedding) "
                                     "VALUES (?, ?, ?, ?, ?)",
                                     [(key.model, key.version, i, int(label), emb) for i, label, emb in rows])
            except _CommitFailed as exc:  # not a duplicate: UNIQUE fires on the INSERT, before the commit
                raise GalleryUnavailable(f"gallery database {self.path}: {exc}") from exc
            except sqlite3.IntegrityError:
                raise DuplicateIds(ids) from None  # the UNIQUE backstop (the check above names them first)
            except sqlite3.OperationalError as exc:
                raise GalleryUnavailable(f"gallery database {self.path}: {exc}") from exc

    def rows_after(self, key: GalleryKey, seq: int) -> list[Row]:
        with self._read_lock:
            self._check_open()
            try:
                return self._reader.execute(
                    "SELECT seq, sample_id, label, embedding FROM weld_gallery "
                    "WHERE model = ? AND version = ? AND seq > ? ORDER BY seq", (key.model, key.version, seq)
                ).fetchall()
            except sqlite3.OperationalError as exc:
                raise GalleryUnavailable(f"gallery database {self.path}: {exc}") from exc

    def close(self) -> None:
        """Close both connections, after any write or read in progress; later calls raise GalleryUnavailable."""
        with self._write_lock, self._read_lock:
            self._closed = True
            for conn in (getattr(self, "_reader", None), self._writer):
                if conn is not None:
                    conn.close()


# ---- PostgreSQL --------------------------------------------------------------------------------------

_PG_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS weld_gallery (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        model TEXT NOT NULL, version TEXT NOT NULL, sample_id TEXT NOT NULL,
        label INTEGER NOT NULL, embedding BYTEA NOT NULL,
        UNIQUE (model, version, sample_id))""",
    "CREATE INDEX IF NOT EXISTS weld_gallery_feed ON weld_gallery (model, version, seq)",
)


class PostgresGallery:
    """A PostgreSQL database shared by every replica (psycopg 3, imported only here: the extra `postgres`).
    A broken connection is dropped and opened again on the next call; a write is never retried (its commit
    may have happened), so its caller sees `GalleryUnavailable` and may retry: ids make that safe (409)."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        try:
            import psycopg
        except ImportError as exc:
            raise GalleryUnavailable("a postgresql:// gallery needs psycopg 3: pip install '.[postgres]'") from exc
        self._pg: Any = psycopg
        self.url = url
        self.timeout_s = timeout_s
        self._conns: dict[str, Any] = {}
        self._closed = False
        self._locks = {"reader": threading.Lock(), "writer": threading.Lock()}
        with self._locks["writer"], self._session("writer") as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_LOCK_KEY,))  # replicas starting at once
            for statement in _PG_SCHEMA:
                conn.execute(statement)

    def _connect(self) -> Any:
        ms = int(self.timeout_s * 1000)
        return self._pg.connect(self.url, autocommit=True, connect_timeout=max(1, round(self.timeout_s)),
                                options=f"-c statement_timeout={ms} -c lock_timeout={ms} "
                                        f"-c idle_in_transaction_session_timeout={ms}")

    @contextmanager
    def _session(self, role: str) -> Iterator[Any]:
        """The role's connection (opened on first use, or again after a failure); database errors other than
        constraint ones become GalleryUnavailable."""
        pg = self._pg
        if self._closed:  # never reconnect for a retired version: each connection is a server backend
            raise GalleryUnavailable("gallery database: closed (its model version was unloaded)")
        try:
            conn = self._conns.get(role)
            if conn is None or conn.closed:
                conn = self._conns[role] = self._connect()
            yield conn
        except pg.errors.IntegrityError:
            raise
        except pg.Error as exc:
            broken = self._conns.pop(role, None)
            if broken is not None:
                broken.close()
            raise GalleryUnavailable(f"gallery database: {type(exc).__name__}: {exc}".strip()) from exc

    def insert(self, key: GalleryKey, rows: Sequence[NewRow], skip_existing: bool = False) -> None:
        ids = [r[0] for r in rows]
        suffix = " ON CONFLICT (model, version, sample_id) DO NOTHING" if skip_existing else ""
        with self._locks["writer"]:
            try:
                with self._session("writer") as conn, conn.transaction():
                    # Held to the commit: the next writer's rows get higher seqs and commit later.
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_LOCK_KEY,))
                    if not skip_existing:
                        existing = [found for (found,) in conn.execute(
                            "SELECT sample_id FROM weld_gallery WHERE model = %s AND version = %s "
                            "AND sample_id = ANY(%s)", (key.model, key.version, ids))]
                        if existing:
                            raise DuplicateIds(existing)
                    with conn.cursor() as cur:
                        cur.executemany("INSERT INTO weld_gallery (model, version, sample_id, label, embedding) "
                                        "VALUES (%s, %s, %s, %s, %s)" + suffix,
                                        [(key.model, key.version, i, int(label), emb) for i, label, emb in rows])
            except self._pg.errors.IntegrityError:
                raise DuplicateIds(ids) from None

    def rows_after(self, key: GalleryKey, seq: int) -> list[Row]:
        with self._locks["reader"], self._session("reader") as conn:
            return [(int(s), str(i), int(label), bytes(emb)) for s, i, label, emb in conn.execute(
                "SELECT seq, sample_id, label, embedding FROM weld_gallery "
                "WHERE model = %s AND version = %s AND seq > %s ORDER BY seq", (key.model, key.version, seq))]

    def close(self) -> None:
        """Close both server connections, after any call in progress; later calls raise GalleryUnavailable."""
        with self._locks["writer"], self._locks["reader"]:
            self._closed = True
            for conn in self._conns.values():
                conn.close()
            self._conns.clear()
