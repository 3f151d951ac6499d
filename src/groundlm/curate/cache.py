"""The answers a curation run already paid for: a SQLite file keyed by a hash of each request.

Every answer is committed on its own as soon as it is validated, so a crash, a kill or Ctrl-C loses only the
requests in flight, and running the same command again sends only the requests not answered yet. The key is a
SHA-256 of the request as JSON (endpoint model, messages, decoding parameters): change a prompt file or a
parameter and the affected requests are sent again; the rest still come from the cache. Entries are JSON text
(never pickle): `{"content", "prompt_tokens", "completion_tokens"}` for an answer, `{"invalid": reason}` for a
request whose every answer failed validation (a rerun counts it as skipped again without paying for it, unless
asked to retry those).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from pathlib import Path


def request_key(*parts) -> str:
    """The cache key of a request made of JSON-serialisable `parts`."""
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Cache:
    """A key → JSON entry store in one SQLite file, shared by the run's threads."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            # WAL: a commit is one append to the log, and a killed writer leaves the file readable.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, entry TEXT NOT NULL)")
        except sqlite3.DatabaseError as err:
            raise ValueError(f"{self.path}: not a curation cache ({err})") from err

    def get(self, key: str) -> dict | None:
        """The entry stored under `key`, or None."""
        with self._lock:
            row = self._db.execute("SELECT entry FROM answers WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            entry = json.loads(row[0])
        except json.JSONDecodeError:
            return None  # treated as never answered: the request is sent again
        return entry if isinstance(entry, dict) else None

    def put(self, key: str, entry: dict) -> None:
        """Store `entry` under `key` and commit it (replacing an older entry)."""
        text = json.dumps(entry, ensure_ascii=False)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO answers (key, entry) VALUES (?, ?)", (key, text))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
