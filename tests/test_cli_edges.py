"""The CLI at its edges, without training anything: `runs` and `show` on a read-only root, the
hint after Ctrl-C or a failed step when --run_id was given, an empty --pipeline_root, and a
Ctrl-C before the pipeline root is known.

The metadata comes from a tiny fake run: two toy components through the real `LocalRunner`.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile

import pytest

from components.base import (BaseExecutor, Component, ComponentSpec, InputSpec, OutputSpec,
                             register_artifact_type)
from conftest import PROJECT_ROOT
from pipeline import cli
from pipeline.dag import Pipeline
from pipeline.local_runner import LocalRunner, PipelineError
from pipeline.metadata import MetadataStore

register_artifact_type("EdgeNote", "A text file (toy type for the CLI edge tests).")


# ---- a tiny fake run -----------------------------------------------------------------------

class WriteSpec(ComponentSpec):
    OUTPUTS = {"note": OutputSpec("EdgeNote")}


class WriteExecutor(BaseExecutor):
    def Do(self, input_dict, output_dict, exec_properties):
        with open(output_dict["note"][0].path("note.txt"), "w") as f:
            f.write("hello")


class Write(Component):
    SPEC_CLASS, EXECUTOR_CLASS = WriteSpec, WriteExecutor


class EchoSpec(ComponentSpec):
    INPUTS = {"note": InputSpec("EdgeNote")}
    OUTPUTS = {"echo": OutputSpec("EdgeNote")}


class EchoExecutor(BaseExecutor):
    def Do(self, input_dict, output_dict, exec_properties):
        if os.environ.get("EDGE_INTERRUPT"):
            raise KeyboardInterrupt
        shutil.copy(input_dict["note"][0].path("note.txt"), output_dict["echo"][0].path("note.txt"))


class Echo(Component):
    SPEC_CLASS, EXECUTOR_CLASS = EchoSpec, EchoExecutor


def toy_pipeline(root) -> Pipeline:
    write = Write()
    return Pipeline("edge", [write, Echo(note=write.outputs["note"])], str(root))


def fake_run(root, run_id: str = "fake-1") -> None:
    LocalRunner(on_progress=lambda event: None).run(toy_pipeline(root), run_id=run_id)


@pytest.fixture
def actsearch(capsys):
    """Calls the CLI's `main` in this process, as `actsearch ARGS...`; returns (code, out, err)."""
    def call(*args: str) -> tuple[int, str, str]:
        argv = cli.FLAGS(["actsearch", *args])
        try:
            code = cli.main(argv)
        finally:
            cli.FLAGS.unparse_flags()
        out, err = capsys.readouterr()
        return code, out, err

    return call


# ---- 1. runs and show on a read-only root --------------------------------------------------

def test_runs_and_show_open_the_metadata_read_only(tmp_path, monkeypatch, actsearch):
    """The reading commands never open the store for writing: simulated here by a connect that
    fails like SQLite in a read-only directory unless the connection is `mode=ro`."""
    root = tmp_path / "root"
    fake_run(root)
    opened = []
    connect = sqlite3.connect

    def read_only_location(database, *args, **kwargs):
        opened.append(str(database))
        if not (kwargs.get("uri") and "mode=ro" in str(database)):
            raise sqlite3.OperationalError("unable to open database file")
        return connect(database, *args, **kwargs)

    monkeypatch.setattr("pipeline.metadata.sqlite3.connect", read_only_location)
    code, out, err = actsearch("runs", f"--pipeline_root={root}")
    assert code == 0, err
    assert out.splitlines()[1].split()[:3] == ["fake-1", "COMPLETE", "local"] and out.rstrip().endswith("2/0/0")
    code, out, err = actsearch("show", "fake-1", f"--pipeline_root={root}")
    assert code == 0, err
    assert "run fake-1 (edge, runner local): COMPLETE" in out and "echo: " in out
    assert opened and all("mode=ro" in path for path in opened)


def test_a_read_only_store_writes_nothing(tmp_path):
    root = tmp_path / "root"
    fake_run(root)
    path = str(root / "metadata.sqlite")
    with MetadataStore(path, read_only=True) as store:
        assert [run.run_id for run in store.list_runs()] == ["fake-1"]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store.create_run("another", "edge", str(root))


def test_a_read_only_store_reads_runs_recorded_before_the_runner_column(tmp_path):
    """A read-only store is not migrated: runs from before `runner` existed read as local."""
    root = tmp_path / "root"
    fake_run(root)
    path = str(root / "metadata.sqlite")
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE runs DROP COLUMN runner")
    with MetadataStore(path, read_only=True) as store:
        assert [(run.run_id, run.runner) for run in store.list_runs()] == [("fake-1", "local")]


def test_runs_and_show_work_on_a_really_read_only_root():
    """A pipeline root nobody may write (chmod 0o555, files owned by someone else): as root,
    the CLI runs as `nobody`, since chmod does not stop root."""
    as_user: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: no way to drop write access")
        as_user = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    parent = tempfile.mkdtemp(prefix="actsearch-ro-", dir="/tmp")  # tmp_path is private to root
    root = os.path.join(parent, "root")
    try:
        os.chmod(parent, 0o755)
        fake_run(root)
        assert os.listdir(root).count("metadata.sqlite") == 1 and not os.path.exists(
            os.path.join(root, "metadata.sqlite-wal"))
        os.chmod(root, 0o555)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", MPLCONFIGDIR=parent)
        for args, expected in ((["runs"], "fake-1"), (["show", "fake-1"], "run fake-1 (edge, runner local)")):
            done = subprocess.run([*as_user, sys.executable, "-m", "pipeline.cli", *args, f"--pipeline_root={root}"],
                                  cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0 and expected in done.stdout, done.stderr[-3000:]
            assert "Traceback" not in done.stderr
    finally:
        if os.path.isdir(root):
            os.chmod(root, 0o755)
        shutil.rmtree(parent, ignore_errors=True)


@pytest.mark.parametrize("make", ["not a database", "a directory"])
def test_an_unreadable_store_is_one_line_naming_the_file(tmp_path, actsearch, make):
    root = tmp_path / "root"
    root.mkdir()
    path = root / "metadata.sqlite"
    if make == "a directory":
        path.mkdir()  # SQLite: "unable to open database file"
    else:
        path.write_text("this is not an SQLite file, " * 100)
    for args in (["runs"], ["show", "fake-1"]):
        code, out, err = actsearch(*args, f"--pipeline_root={root}")
        assert code == 2
        assert err.startswith(f"actsearch {args[0]}: error: cannot read {path}: ") and err.count("\n") == 1


# ---- 2. the hint to continue when --run_id was given ---------------------------------------

@pytest.mark.parametrize("runner", ["local", "kfp-local"])
def test_ctrl_c_with_a_run_id_says_to_drop_it(monkeypatch, actsearch, runner):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "command_run", interrupted)
    code, _, err = actsearch("run", f"--runner={runner}", "--run_id=X")
    assert code == 130
    assert "run the same command again without --run_id=X (or with a new --run_id)" in err
    code, _, err = actsearch("run", f"--runner={runner}")
    assert code == 130
    assert "run the same command again to continue where it stopped" in err and "--run_id" not in err


def test_a_failed_step_with_a_run_id_says_to_drop_it(monkeypatch, actsearch):
    def failed():
        raise PipelineError("component 'echo' failed: RuntimeError: boom", component_id="echo", run_id="X")

    monkeypatch.setattr(cli, "command_run", failed)
    code, _, err = actsearch("run", "--run_id=X")
    assert code == 1
    assert "Fix the cause and run the same command again without --run_id=X (or with a new --run_id)" in err


def test_the_hint_matches_what_the_local_runner_does(tmp_path, monkeypatch):
    """An interrupted run's id cannot be used again; a run without it continues from the
    finished steps."""
    root = tmp_path / "root"
    monkeypatch.setenv("EDGE_INTERRUPT", "1")
    with pytest.raises(KeyboardInterrupt):
        fake_run(root, run_id="X")
    monkeypatch.delenv("EDGE_INTERRUPT")
    with pytest.raises(PipelineError, match="run id 'X' already exists"):
        fake_run(root, run_id="X")
    result = LocalRunner(on_progress=lambda event: None).run(toy_pipeline(root))
    assert {cid: r.state for cid, r in result.components.items()} == {"write": "CACHED", "echo": "COMPLETE"}


# ---- 3. an empty --pipeline_root -----------------------------------------------------------

def test_an_empty_pipeline_root_is_refused_before_any_work(tmp_path, monkeypatch, actsearch):
    import activations.layer

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(activations.layer, "prefer_wide_vectors", lambda: None)
    monkeypatch.setattr(cli, "check_data_source", lambda config: pytest.fail("got past the root check"))
    for args in (["run"], ["runs"], ["show", "fake-1"]):
        for value in ("", " "):
            code, _, err = actsearch(*args, f"--pipeline_root={value}")
            assert code == 2, err
            assert f"actsearch {args[0]}: error: pipeline_root must name a directory" in err
            assert "(e.g. runs/demo)" in err
    assert os.listdir(tmp_path) == []


# ---- 4. Ctrl-C before the pipeline root is known -------------------------------------------

def test_an_early_ctrl_c_does_not_read_the_current_directory(tmp_path, monkeypatch, actsearch):
    import activations.layer

    (tmp_path / "report").mkdir()
    (tmp_path / cli.PUBLISHED).write_text(json.dumps(
        {"run_id": "earlier", "published": "2026-01-02 03:04:05", "deliverables": ["report"]}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(activations.layer, "prefer_wide_vectors", lambda: None)
    monkeypatch.setattr(cli, "_RUN_ROOT", None)

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_config", interrupted)
    code, _, err = actsearch("run")
    assert code == 130 and "interrupted" in err
    assert "Note:" not in err and "None" not in err
    # With the root known, the note names whose deliverables it holds.
    assert "still hold the results of run earlier" in cli._previous_deliverables(str(tmp_path), "this-run")


# ---- TensorFlow's native start-up notes ----------------------------------------------------

FAKE_TENSORFLOW = """
import os
os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
os.write(2, b"I0000 00:00:1 1 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.\\n")
os.write(2, b"W0000 a real warning the user must see\\n")
if os.environ.get("FAKE_TF_FAILS"):
    raise ImportError("broken install")
"""


@pytest.mark.parametrize("fails", [False, True])
def test_tensorflows_start_up_notes_are_left_out_and_everything_else_kept(tmp_path, fails):
    (tmp_path / "tensorflow.py").write_text(FAKE_TENSORFLOW)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(PROJECT_ROOT)]),
           **({"FAKE_TF_FAILS": "1"} if fails else {})}
    done = subprocess.run([sys.executable, "-c", "from pipeline.cli import import_tensorflow_quietly as q; q()"],
                          capture_output=True, text=True, env=env, cwd=PROJECT_ROOT, timeout=120)
    assert "a real warning the user must see" in done.stderr
    if fails:  # nothing is hidden when the import fails
        assert done.returncode != 0 and "broken install" in done.stderr and "cudart_stub" in done.stderr
    else:
        assert done.returncode == 0, done.stderr
        assert "cudart_stub" not in done.stderr and "absl::InitializeLog" not in done.stderr


# ---- data paths ------------------------------------------------------------------------------

def test_a_missing_data_folder_is_named_absolutely_and_leaves_no_root_behind(tmp_path, monkeypatch, actsearch):
    import activations.layer

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(activations.layer, "prefer_wide_vectors", lambda: None)
    code, _, err = actsearch("run", "--preset=cifar10", f"--pipeline_root={tmp_path / 'root'}")
    assert code == 2
    assert f"data folder '{tmp_path / '.cache/cifar10/train'}' does not exist" in err
    assert "tar xzf cifar10-jpeg-train.tar.gz -C .cache/cifar10" in err  # how to get it
    assert not (tmp_path / "root").exists()
    (tmp_path / "afile").write_text("x")
    code, _, err = actsearch("run", "--data=folder:afile", f"--pipeline_root={tmp_path / 'root'}")
    assert code == 2 and "is a file, not a folder of images" in err


def test_a_bad_value_is_reported_before_tensorflow_is_imported(tmp_path):
    """Checking values needs no TensorFlow (seconds to import); only function names do, last."""
    script = ("import atexit, sys\n"
              "atexit.register(lambda: print('tensorflow imported:', 'tensorflow' in sys.modules))\n"
              "from pipeline import cli\n"
              f"sys.argv = ['actsearch', 'run', '--alpha=2', '--pipeline_root={tmp_path / 'root'}']\n"
              "cli.run_main()\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=PROJECT_ROOT,
                          timeout=120)
    assert done.returncode == 2 and "alpha must lie in (0, 1), got 2.0" in done.stderr
    assert "tensorflow imported: False" in done.stdout
