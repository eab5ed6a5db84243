"""SQLite metadata store: runs, executions, artifacts and the events linking them (lineage).

A small stand-in for ML Metadata. An execution's output artifacts are inserted in the same
transaction that marks it COMPLETE, so a published artifact always has a finished producer.
A CACHED execution points at the artifacts of the COMPLETE execution it reused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import time
import urllib.parse
from typing import Any, Mapping

from components.base import Artifact

# Execution states.
RUNNING, COMPLETE, FAILED, CACHED = "RUNNING", "COMPLETE", "FAILED", "CACHED"
# An execution or run stopped before it finished (Ctrl-C, SIGTERM, its process died): not a
# failure of the step, which runs again (and continues from its resume state) on the next run.
# Run statuses are RUNNING, COMPLETE, FAILED and INTERRUPTED.
INTERRUPTED = "INTERRUPTED"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, pipeline_name TEXT NOT NULL, pipeline_root TEXT NOT NULL,
    status TEXT NOT NULL, start_time REAL NOT NULL, end_time REAL, error TEXT,
    results TEXT NOT NULL DEFAULT '{}', runner TEXT NOT NULL DEFAULT 'local');
CREATE TABLE IF NOT EXISTS executions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL REFERENCES runs(run_id),
    component_id TEXT NOT NULL, component_type TEXT NOT NULL, cache_key TEXT NOT NULL,
    state TEXT NOT NULL, start_time REAL NOT NULL, end_time REAL,
    exec_properties TEXT NOT NULL, results TEXT NOT NULL DEFAULT '{}', error TEXT,
    cached_from INTEGER REFERENCES executions(id));
CREATE INDEX IF NOT EXISTS executions_by_key ON executions(cache_key, state);
CREATE INDEX IF NOT EXISTS executions_by_run ON executions(run_id);
CREATE TABLE IF NOT EXISTS artifacts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, type_name TEXT NOT NULL, uri TEXT NOT NULL,
    properties TEXT NOT NULL, fingerprint TEXT, create_time REAL NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    execution_id INTEGER NOT NULL REFERENCES executions(id),
    artifact_id INTEGER NOT NULL REFERENCES artifacts(id),
    kind TEXT NOT NULL CHECK (kind IN ('INPUT', 'OUTPUT')),
    name TEXT NOT NULL, idx INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_execution ON events(execution_id);
CREATE INDEX IF NOT EXISTS events_by_artifact ON events(artifact_id, kind);
"""


@dataclasses.dataclass
class RunRecord:
    run_id: str
    pipeline_name: str
    pipeline_root: str
    status: str
    start_time: float
    end_time: float | None
    error: str | None
    results: dict[str, str]
    runner: str = "local"


@dataclasses.dataclass
class ExecutionRecord:
    id: int
    run_id: str
    component_id: str
    component_type: str
    cache_key: str
    state: str
    start_time: float
    end_time: float | None
    exec_properties: dict[str, Any]
    results: dict[str, str]
    error: str | None
    cached_from: int | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class MetadataStore:
    """Records runs, executions, artifacts and lineage in one SQLite file."""

    def __init__(self, path: str, read_only: bool = False) -> None:
        """`read_only` opens an existing store without writing anything (not even the WAL
        switch or the schema), so `actsearch runs` and `show` work on archived or read-only
        roots; writes then raise `sqlite3.OperationalError`."""
        self.path = path
        if read_only:
            self._conn = _connect_read_only(path)
            self._conn.row_factory = sqlite3.Row
            return
        self._conn = sqlite3.connect(path, timeout=30)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA foreign_keys = ON")
        self._conn.execute("PRAGMA journal_mode = WAL")    # crash-safe, fewer fsyncs
        self._conn.execute("PRAGMA synchronous = NORMAL")
        self._conn.executescript(_SCHEMA)
        self._add_runner_column()

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "MetadataStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- runs ---------------------------------------------------------------------------

    def create_run(self, run_id: str, pipeline_name: str, pipeline_root: str,
                   runner: str = "local") -> None:
        """Records a RUNNING run; `runner` says what ran it ("local", "kfp-local")."""
        if self.get_run(run_id) is not None:
            raise ValueError(f"run id {run_id!r} already exists in {self.path}; "
                             f"choose another or let the runner generate one")
        with self._conn:
            self._conn.execute(
                "INSERT INTO runs (run_id, pipeline_name, pipeline_root, status, start_time, "
                "runner) VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, pipeline_name, pipeline_root, RUNNING, time.time(), runner))

    def finish_run(self, run_id: str, status: str, error: str | None = None,
                   results: Mapping[str, str] | None = None) -> None:
        with self._conn:
            self._conn.execute(
                "UPDATE runs SET status = ?, end_time = ?, error = ?, results = ? "
                "WHERE run_id = ?", (status, time.time(), error, json.dumps(results or {}),
                                     run_id))

    def get_run(self, run_id: str) -> RunRecord | None:
        row = self._conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return _run(row) if row else None

    def list_runs(self) -> list[RunRecord]:
        """All runs, newest first."""
        rows = self._conn.execute("SELECT * FROM runs ORDER BY start_time DESC, rowid DESC")
        return [_run(r) for r in rows]

    # ---- executions ---------------------------------------------------------------------

    def start_execution(self, run_id: str, component_id: str, component_type: str,
                        cache_key: str, exec_properties: Mapping[str, Any],
                        inputs: Mapping[str, list[Artifact]]) -> int:
        """Records a RUNNING execution and its input events; returns the execution id."""
        with self._conn:
            eid = self._insert_execution(run_id, component_id, component_type, cache_key,
                                         RUNNING, exec_properties)
            self._insert_events(eid, "INPUT", inputs)
        return eid

    def complete_execution(self, execution_id: int, outputs: Mapping[str, list[Artifact]],
                           results: Mapping[str, str], *, reused: bool = False,
                           cached_from: int | None = None) -> None:
        """Publishes the outputs (assigning artifact ids) and marks the execution COMPLETE, or
        CACHED when it copied the outputs of an earlier execution (`cached_from`, if known)
        instead of running: a Kubeflow step's own cache."""
        now = time.time()
        with self._conn:
            for artifacts in outputs.values():
                for a in artifacts:
                    cur = self._conn.execute(
                        "INSERT INTO artifacts (type_name, uri, properties, fingerprint, "
                        "create_time) VALUES (?, ?, ?, ?, ?)",
                        (a.type_name, a.uri, json.dumps(a.properties), a.fingerprint, now))
                    a.id = cur.lastrowid
            self._insert_events(execution_id, "OUTPUT", outputs)
            self._conn.execute(
                "UPDATE executions SET state = ?, end_time = ?, results = ?, cached_from = ? "
                "WHERE id = ?", (CACHED if reused else COMPLETE, now, json.dumps(dict(results)),
                                 cached_from, execution_id))

    def fail_execution(self, execution_id: int, error: str) -> None:
        self._end_execution(execution_id, FAILED, error)

    def interrupt_execution(self, execution_id: int, reason: str) -> None:
        """Marks an execution stopped by Ctrl-C or SIGTERM INTERRUPTED, not FAILED: nothing is
        wrong with the step, and `runs`/`show` say so."""
        self._end_execution(execution_id, INTERRUPTED, reason)

    def _end_execution(self, execution_id: int, state: str, error: str) -> None:
        with self._conn:
            self._conn.execute(
                "UPDATE executions SET state = ?, end_time = ?, error = ? WHERE id = ?",
                (state, time.time(), error, execution_id))

    def record_cached(self, run_id: str, component_id: str, component_type: str,
                      source: ExecutionRecord, inputs: Mapping[str, list[Artifact]]) -> int:
        """Records that `source`'s outputs were reused; links the same output artifacts."""
        with self._conn:
            eid = self._insert_execution(run_id, component_id, component_type, source.cache_key,
                                         CACHED, source.exec_properties, cached_from=source.id,
                                         results=source.results, end=True)
            self._insert_events(eid, "INPUT", inputs)
            self._insert_events(eid, "OUTPUT", self.outputs_of(source.id))
        return eid

    def find_complete(self, cache_key: str) -> list[ExecutionRecord]:
        """COMPLETE executions with this cache key, newest first (cache candidates)."""
        rows = self._conn.execute(
            "SELECT * FROM executions WHERE cache_key = ? AND state = ? ORDER BY id DESC",
            (cache_key, COMPLETE))
        return [_execution(r) for r in rows]

    def mark_interrupted(self, reason: str, last_alive: Mapping[str, float] | None = None) -> list[ExecutionRecord]:
        """Marks RUNNING executions and runs INTERRUPTED (left by a process that died); returns
        those executions so their partial outputs can be cleaned up. A run's end time (and its
        executions') is `last_alive[run_id]`, when its dead process was last seen, if known and
        not before their start; else now, which makes a run killed yesterday look as if it took a
        day."""
        stale = [_execution(r) for r in self._conn.execute(
            "SELECT * FROM executions WHERE state = ?", (RUNNING,))]
        now = time.time()
        running = [row[0] for row in self._conn.execute("SELECT run_id FROM runs WHERE status = ?", (RUNNING,))]
        runs = set(running) | {execution.run_id for execution in stale}
        with self._conn:
            for run_id in runs:
                end = min((last_alive or {}).get(run_id, now), now)
                self._conn.execute("UPDATE executions SET state = ?, end_time = MAX(start_time, ?), error = ? "
                                   "WHERE state = ? AND run_id = ?", (INTERRUPTED, end, reason, RUNNING, run_id))
                self._conn.execute("UPDATE runs SET status = ?, end_time = MAX(start_time, ?), error = ? "
                                   "WHERE status = ? AND run_id = ?", (INTERRUPTED, end, reason, RUNNING, run_id))
        return stale

    def get_execution(self, execution_id: int) -> ExecutionRecord | None:
        row = self._conn.execute("SELECT * FROM executions WHERE id = ?",
                                 (execution_id,)).fetchone()
        return _execution(row) if row else None

    def executions(self, run_id: str) -> list[ExecutionRecord]:
        """Executions of a run in the order they started."""
        rows = self._conn.execute("SELECT * FROM executions WHERE run_id = ? ORDER BY id",
                                  (run_id,))
        return [_execution(r) for r in rows]

    # ---- artifacts and lineage -----------------------------------------------------------

    def get_artifact(self, artifact_id: int) -> Artifact | None:
        row = self._conn.execute("SELECT * FROM artifacts WHERE id = ?",
                                 (artifact_id,)).fetchone()
        return _artifact(row) if row else None

    def inputs_of(self, execution_id: int) -> dict[str, list[Artifact]]:
        return self._events(execution_id, "INPUT")

    def outputs_of(self, execution_id: int) -> dict[str, list[Artifact]]:
        return self._events(execution_id, "OUTPUT")

    def producer_of(self, artifact_id: int) -> ExecutionRecord | None:
        """The COMPLETE execution that wrote the artifact (not the CACHED ones reusing it)."""
        row = self._conn.execute(
            "SELECT x.* FROM events e JOIN executions x ON x.id = e.execution_id "
            "WHERE e.artifact_id = ? AND e.kind = 'OUTPUT' AND x.state = ?",
            (artifact_id, COMPLETE)).fetchone()
        return _execution(row) if row else None

    def lineage(self, artifact_id: int) -> dict[str, Any]:
        """The artifact, its producing execution, and recursively the lineage of its inputs:
        ``{"artifact": {...}, "execution": {...} | None, "inputs": {name: [lineage, ...]}}``."""
        artifact = self.get_artifact(artifact_id)
        if artifact is None:
            raise KeyError(f"no artifact with id {artifact_id} in {self.path}")
        producer = self.producer_of(artifact_id)
        node: dict[str, Any] = {"artifact": artifact.to_dict(), "execution": None, "inputs": {}}
        if producer is not None:
            node["execution"] = producer.to_dict()
            node["inputs"] = {name: [self.lineage(a.id) for a in arts]
                              for name, arts in self.inputs_of(producer.id).items()}
        return node

    # ---- helpers -------------------------------------------------------------------------

    def _add_runner_column(self) -> None:
        """Stores written before runs knew their runner were all the local runner's."""
        columns = {row["name"] for row in self._conn.execute("PRAGMA table_info(runs)")}
        if "runner" in columns:
            return
        try:
            with self._conn:
                self._conn.execute(
                    "ALTER TABLE runs ADD COLUMN runner TEXT NOT NULL DEFAULT 'local'")
        except sqlite3.OperationalError:
            if "runner" not in {row["name"] for row in
                                self._conn.execute("PRAGMA table_info(runs)")}:
                raise                         # not another process adding it at the same time

    def _insert_execution(self, run_id: str, component_id: str, component_type: str,
                          cache_key: str, state: str, exec_properties: Mapping[str, Any],
                          cached_from: int | None = None, results: Mapping[str, str] = (),
                          end: bool = False) -> int:
        now = time.time()
        cur = self._conn.execute(
            "INSERT INTO executions (run_id, component_id, component_type, cache_key, state, "
            "start_time, end_time, exec_properties, results, cached_from) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (run_id, component_id, component_type, cache_key, state, now, now if end else None,
             json.dumps(dict(exec_properties), sort_keys=True), json.dumps(dict(results)),
             cached_from))
        return cur.lastrowid

    def _insert_events(self, execution_id: int, kind: str,
                       artifacts: Mapping[str, list[Artifact]]) -> None:
        rows = []
        for name, arts in artifacts.items():
            for idx, a in enumerate(arts):
                if a.id is None:
                    raise ValueError(f"artifact {a.uri!r} ({name}) has no id: only published "
                                     f"artifacts can be linked to an execution")
                rows.append((execution_id, a.id, kind, name, idx))
        self._conn.executemany(
            "INSERT INTO events (execution_id, artifact_id, kind, name, idx) "
            "VALUES (?, ?, ?, ?, ?)", rows)

    def _events(self, execution_id: int, kind: str) -> dict[str, list[Artifact]]:
        rows = self._conn.execute(
            "SELECT e.name, a.* FROM events e JOIN artifacts a ON a.id = e.artifact_id "
            "WHERE e.execution_id = ? AND e.kind = ? ORDER BY e.name, e.idx",
            (execution_id, kind))
        result: dict[str, list[Artifact]] = {}
        for row in rows:
            result.setdefault(row["name"], []).append(_artifact(row))
        return result


def _connect_read_only(path: str) -> sqlite3.Connection:
    """A `mode=ro` connection. Reading a WAL store needs its -shm file, which SQLite cannot
    create in a directory we may not write: there, if no -wal or -journal is left beside the
    file (so it holds every committed transaction), the store is read as immutable instead."""
    uri = f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=30)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.Error as error:
        conn.close()
        if (not isinstance(error, sqlite3.OperationalError)
                or os.access(os.path.dirname(os.path.abspath(path)), os.W_OK)
                or any(os.path.exists(path + end) for end in ("-wal", "-journal"))):
            raise
    return sqlite3.connect(uri + "&immutable=1", uri=True)


def _run(row: sqlite3.Row) -> RunRecord:
    # A store opened read-only is not migrated: before `runner` existed, every run was local.
    runner = row["runner"] if "runner" in row.keys() else "local"
    return RunRecord(row["run_id"], row["pipeline_name"], row["pipeline_root"], row["status"],
                     row["start_time"], row["end_time"], row["error"], json.loads(row["results"]),
                     runner)


def _execution(row: sqlite3.Row) -> ExecutionRecord:
    return ExecutionRecord(
        row["id"], row["run_id"], row["component_id"], row["component_type"], row["cache_key"],
        row["state"], row["start_time"], row["end_time"], json.loads(row["exec_properties"]),
        json.loads(row["results"]), row["error"], row["cached_from"])


def _artifact(row: sqlite3.Row) -> Artifact:
    return Artifact(row["type_name"], row["uri"], json.loads(row["properties"]), row["id"],
                    row["fingerprint"])
