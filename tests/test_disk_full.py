"""A disk that fills up during a run: the step's own error reaches the user, the records of the
failure never mask it, staging is removed, and the run is recorded FAILED when it still can be
(and the message says so when it cannot)."""

from __future__ import annotations

import builtins
import dataclasses
import errno
import json
import os
import pathlib
import sqlite3
import subprocess
import sys
from typing import Any, Callable

import pytest

from components.base import (Artifact, BaseExecutor, Component, ComponentSpec, InputSpec,
                             OutputSpec, register_artifact_type)
from pipeline import local_runner
from pipeline.dag import Pipeline
from pipeline.local_runner import LocalRunner, PipelineError
from pipeline.metadata import MetadataStore

register_artifact_type("Blob", "Bytes written by the disk-full tests' toy steps.")

NO_SPACE = os.strerror(errno.ENOSPC)            # "No space left on device"
STORE_FULL = "database or disk is full"         # what SQLite says on a full disk

# What the `fill` step does after writing its output; tests set it (None: nothing).
_FILL: Callable[[Artifact], None] | None = None


class BlobSpec(ComponentSpec):
    OUTPUTS = {"blob": OutputSpec("Blob")}


class FillExecutor(BaseExecutor):
    VERSION = "1"

    def Do(self, input_dict, output_dict, exec_properties):
        blob = output_dict["blob"][0]
        with open(blob.path("blob.bin"), "wb") as f:
            f.write(b"x" * 1000)
        if _FILL is not None:
            _FILL(blob)


class Fill(Component):
    SPEC_CLASS, EXECUTOR_CLASS = BlobSpec, FillExecutor


class AfterSpec(ComponentSpec):
    INPUTS = {"blob": InputSpec("Blob")}
    OUTPUTS = {"copy": OutputSpec("Blob")}


class AfterExecutor(BaseExecutor):
    VERSION = "1"

    def Do(self, input_dict, output_dict, exec_properties):
        with open(output_dict["copy"][0].path("blob.bin"), "wb") as f:
            f.write(b"y")


class After(Component):
    SPEC_CLASS, EXECUTOR_CLASS = AfterSpec, AfterExecutor


def build(root: pathlib.Path) -> Pipeline:
    fill = Fill(component_id="fill")
    return Pipeline("disk", [fill, After(component_id="after", blob=fill.outputs["blob"])], str(root))


def no_space(path: str) -> OSError:
    return OSError(errno.ENOSPC, NO_SPACE, path)


# ---- a simulated full disk -------------------------------------------------------------------

@dataclasses.dataclass
class SimulatedDisk:
    """Fills up when a step says so. While full, committing to SQLite fails as SQLite does on a
    full disk and the local runner's files (run.json) are created but cannot be written.
    `freed_by_staging`: the failed step's staging directory holds the space, so removing it
    frees the disk (otherwise something else filled it and it stays full)."""

    root: pathlib.Path
    freed_by_staging: bool
    filled: bool = False

    def is_full(self) -> bool:
        if not self.filled:
            return False
        return not self.freed_by_staging or any(self.root.glob("*/*/.*.tmp"))

    def fill(self, blob: Artifact) -> None:
        self.filled = True
        raise no_space(blob.path("blob.bin"))

    def open(self, file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = builtins.open(file, mode, *args, **kwargs)
        return SimulatedFile(handle, self) if "w" in mode else handle


class SimulatedFile:
    """A file on the simulated disk: it opens (that takes an inode, not space), but while the
    disk is full nothing can be written into it."""

    def __init__(self, handle: Any, disk: SimulatedDisk) -> None:
        self.handle, self.disk = handle, disk

    def write(self, data: Any) -> int:
        if self.disk.is_full():
            raise no_space(self.handle.name)
        return self.handle.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)

    def __enter__(self) -> "SimulatedFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.handle.close()


class FullDiskConnection:
    """A real SQLite connection whose commits fail while the disk is full."""

    def __init__(self, conn: sqlite3.Connection, disk: SimulatedDisk) -> None:
        object.__setattr__(self, "_conn", conn)
        object.__setattr__(self, "_disk", disk)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._conn, name, value)

    def __enter__(self) -> sqlite3.Connection:
        return self._conn.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        if exc[0] is None and self._disk.is_full():
            self._conn.rollback()
            raise sqlite3.OperationalError(STORE_FULL)
        return self._conn.__exit__(*exc)


def simulated_disk(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
                   freed_by_staging: bool) -> SimulatedDisk:
    disk = SimulatedDisk(tmp_path / "root", freed_by_staging)
    connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect",
                        lambda *a, **k: FullDiskConnection(connect(*a, **k), disk))
    monkeypatch.setattr(local_runner, "open", disk.open, raising=False)
    monkeypatch.setattr(sys.modules[__name__], "_FILL", disk.fill)
    return disk


def leftovers(root: pathlib.Path) -> list[str]:
    """Staging directories and half-written files a failed run must not leave behind."""
    return sorted(str(p) for p in root.rglob("*") if p.name.endswith(".tmp"))


def run_status(root: pathlib.Path) -> list[str]:
    with MetadataStore(str(root / "metadata.sqlite")) as store:
        return [run.status for run in store.list_runs()]


# ---- tests -----------------------------------------------------------------------------------

def test_a_full_disk_fails_the_step_with_its_own_error_and_the_run_is_recorded_failed(
        tmp_path, monkeypatch):
    disk = simulated_disk(tmp_path, monkeypatch, freed_by_staging=True)
    with pytest.raises(PipelineError) as info:
        LocalRunner().run(build(disk.root))
    message = str(info.value)
    assert message.startswith(f"component 'fill' failed: OSError: [Errno 28] {NO_SPACE}")
    assert f"see {disk.root / 'run.json'}" in message and "could not be written" not in message
    assert info.value.component_id == "fill"
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.ENOSPC
    assert leftovers(disk.root) == [] and not list((disk.root / "fill" / "blob").iterdir())
    doc = json.loads((disk.root / "run.json").read_text())
    assert doc["status"] == "failed" and NO_SPACE in doc["error"]
    assert doc["components"]["fill"]["state"] == "failed"
    assert doc["components"]["after"] == {"state": "pending"}
    with MetadataStore(str(disk.root / "metadata.sqlite")) as store:
        run = store.get_run(doc["run_id"])
        assert run.status == "FAILED" and NO_SPACE in run.error
        assert [(e.component_id, e.state) for e in store.executions(run.run_id)] == [("fill", "FAILED")]

    disk.filled = False                         # space freed: the next run completes
    monkeypatch.setattr(sys.modules[__name__], "_FILL", None)
    LocalRunner().run(build(disk.root))
    assert run_status(disk.root) == ["COMPLETE", "FAILED"]   # the failure stays a failure


def test_records_that_cannot_be_written_are_named_after_the_cause(tmp_path, monkeypatch):
    disk = simulated_disk(tmp_path, monkeypatch, freed_by_staging=False)
    with pytest.raises(PipelineError) as info:
        LocalRunner().run(build(disk.root))
    message = str(info.value)
    assert message.startswith(f"component 'fill' failed: OSError: [Errno 28] {NO_SPACE}")
    assert "recording the failure failed too" in message
    assert f"{disk.root / 'metadata.sqlite'} could not be written (OperationalError: {STORE_FULL})" in message
    assert f"{disk.root / 'run.json'} could not be written (OSError: [Errno 28] {NO_SPACE}" in message
    assert "as interrupted" in message and f"see {disk.root / 'run.json'}" not in message
    assert message.index(NO_SPACE) < message.index(STORE_FULL)   # the cause comes first
    assert info.value.component_id == "fill" and info.value.__cause__.errno == errno.ENOSPC
    assert leftovers(disk.root) == []           # staging and run.json.tmp removed all the same

    disk.filled = False                         # as the message said: the record stayed RUNNING
    assert json.loads((disk.root / "run.json").read_text())["status"] == "running"
    assert run_status(disk.root) == ["RUNNING"]


def test_a_full_disk_at_the_start_is_a_one_line_error(tmp_path, monkeypatch):
    disk = simulated_disk(tmp_path, monkeypatch, freed_by_staging=False)
    monkeypatch.setattr(sys.modules[__name__], "_FILL", None)
    LocalRunner().run(build(disk.root))         # creates the store
    disk.filled = True
    with pytest.raises(PipelineError, match=f"^cannot use the metadata store .*metadata.sqlite: "
                                            f"OperationalError: {STORE_FULL}") as info:
        LocalRunner().run(build(disk.root))
    assert info.value.component_id is None


def test_a_run_that_cannot_write_run_json_at_the_start_is_recorded_failed(tmp_path, monkeypatch):
    root = tmp_path / "root"
    full = SimulatedDisk(root, freed_by_staging=False, filled=True)   # only for run.json

    def open_run_json_on_full_disk(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = builtins.open(file, mode, *args, **kwargs)
        return SimulatedFile(handle, full) if str(file).endswith("run.json.tmp") else handle

    monkeypatch.setattr(local_runner, "open", open_run_json_on_full_disk, raising=False)
    with pytest.raises(PipelineError, match=f"^the run could not start: OSError: \\[Errno 28\\] {NO_SPACE}"
                       ) as info:
        LocalRunner().run(build(root))
    assert info.value.component_id is None and "run.json could not be written" in str(info.value)
    assert "metadata.sqlite could not be written" not in str(info.value)
    assert run_status(root) == ["FAILED"] and leftovers(root) == []


def test_ctrl_c_on_a_full_disk_still_stops_the_run(tmp_path, monkeypatch):
    disk = simulated_disk(tmp_path, monkeypatch, freed_by_staging=False)

    def fill_then_ctrl_c(blob: Artifact) -> None:
        disk.filled = True
        raise KeyboardInterrupt

    monkeypatch.setattr(sys.modules[__name__], "_FILL", fill_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):      # not the store's error raised while recording it
        LocalRunner().run(build(disk.root))
    assert leftovers(disk.root) == []


# ---- a real full disk (a small tmpfs; needs root and the right to mount) ----------------------

@pytest.fixture
def small_tmpfs(tmp_path):
    """A 300 KiB tmpfs; skips the test where it cannot be mounted."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def _fill_until_full(blob: Artifact) -> None:
    with open(blob.path("filler.bin"), "wb") as f:
        while True:                             # ends with OSError: [Errno 28]
            f.write(b"x" * 16384)
            f.flush()


def test_a_real_full_disk_is_reported_and_recorded(small_tmpfs, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "_FILL", _fill_until_full)
    with pytest.raises(PipelineError) as info:
        LocalRunner().run(build(small_tmpfs))
    assert str(info.value).startswith(f"component 'fill' failed: OSError: [Errno 28] {NO_SPACE}")
    assert "could not be written" not in str(info.value)     # removing staging freed the space
    assert leftovers(small_tmpfs) == []
    assert json.loads((small_tmpfs / "run.json").read_text())["status"] == "failed"
    assert run_status(small_tmpfs) == ["FAILED"]
