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
import signal
import tempfile
import time

import pytest

from components.base import (BaseExecutor, Component, ComponentSpec, InputSpec, OutputSpec,
                             register_artifact_type)
from conftest import PROJECT_ROOT, run_and_signal
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
        if os.environ.get("EDGE_WAIT"):  # for a signal from the test
            open(os.environ["EDGE_WAIT"], "w").close()
            time.sleep(120)
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

    def interrupted(**kwargs):
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


# ---- SIGTERM, interrupted steps in runs/show ---------------------------------------------------

def test_sigterm_stops_a_run_like_ctrl_c_says_so_and_exits_143(tmp_path):
    """`timeout`, `docker stop`, an eviction or a job's time limit send SIGTERM: the run is
    recorded as interrupted, the hint to continue is printed, and the exit status is 128 + 15
    (Ctrl-C's is 128 + 2)."""
    root, marker = tmp_path / "root", tmp_path / "waiting"
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    script = (f"import sys\nsys.path[:0] = [{tests_dir!r}, {str(PROJECT_ROOT)!r}]\n"
              "import test_cli_edges as edges\n"
              "from pipeline import cli\n"
              "from pipeline.local_runner import LocalRunner\n"
              "def run():\n"
              f"    cli._RUN_ROOT = {str(root)!r}\n"
              f"    LocalRunner(on_progress=print).run(edges.toy_pipeline({str(root)!r}))\n"
              "    return 0\n"
              "cli.command_run = run\n"
              f"sys.argv = ['actsearch', 'run', '--pipeline_root={root}']\n"
              "cli.run_main()\n")
    code, out, err = run_and_signal([sys.executable, "-c", script], marker, signal.SIGTERM,
                                    env={**os.environ, "EDGE_WAIT": str(marker)}, cwd=PROJECT_ROOT)
    assert code == 143, (out, err)
    assert "[echo] stopped by SIGTERM after" in out
    assert err.strip() == ("actsearch run: terminated (SIGTERM). Finished steps and trials are kept: "
                           "run the same command again to continue where it stopped.")
    doc = json.loads((root / "run.json").read_text())
    assert doc["status"] == "interrupted" and doc["end_time"] is not None
    assert doc["components"]["echo"]["state"] == "interrupted"
    with MetadataStore(str(root / "metadata.sqlite")) as store:
        assert store.get_run(doc["run_id"]).status == "INTERRUPTED"
    result = LocalRunner(on_progress=lambda event: None).run(toy_pipeline(root))
    assert {cid: r.state for cid, r in result.components.items()} == {"write": "CACHED", "echo": "COMPLETE"}


def test_an_interrupted_step_is_shown_as_interrupted_not_failed(tmp_path, monkeypatch, actsearch):
    root = tmp_path / "root"
    monkeypatch.setenv("EDGE_INTERRUPT", "1")
    with pytest.raises(KeyboardInterrupt):
        fake_run(root, run_id="stopped")
    code, out, err = actsearch("show", "stopped", f"--pipeline_root={root}")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "run stopped (edge, runner local): INTERRUPTED - component 'echo' was stopped by Ctrl-C"
    assert lines[-1].split()[:2] == ["echo", "INTERRUPTED"] and "FAILED" not in out
    code, out, err = actsearch("runs", f"--pipeline_root={root}")
    assert code == 0, err
    assert out.splitlines()[1].split()[:2] == ["stopped", "INTERRUPTED"]
    assert out.rstrip().endswith("1/0/0, 1 interrupted")   # not counted as failed


def test_show_imports_tensorflow_quietly_for_the_lineage(tmp_path, monkeypatch):
    """`show` prints the lineage with the activations library, which imports TensorFlow: its
    native start-up notes stay out of the terminal, as under `run`."""
    import components.tuner

    imports = []
    monkeypatch.setattr(cli, "import_tensorflow_quietly", lambda *args, **kwargs: imports.append("quietly"))
    monkeypatch.setattr(components.tuner, "read_trials", lambda uri: [])
    activation = tmp_path / "activation.json"
    activation.write_text(json.dumps({"expression": "x * sigmoid(beta * x)"}))
    cli._print_function_lineage(str(activation), str(tmp_path))
    assert imports == ["quietly"]


# ---- --run_id and --output, checked before any work ---------------------------------------------

@pytest.mark.parametrize("run_id,message", [
    ("a b", "--run_id: run id 'a b' may contain only letters, digits, '_', '-', '.'"),
    ("../escape", "--run_id: run id '../escape' may contain only letters"),
    ("", "--run_id: run id '' may contain only letters"),
    ("taken", "--run_id: run 'taken' already exists under"),
])
def test_a_bad_or_taken_run_id_is_a_usage_error_before_any_work(tmp_path, monkeypatch, actsearch, run_id, message):
    root = tmp_path / "root"
    fake_run(root, run_id="taken")
    monkeypatch.setattr(cli, "check_functions", lambda config: pytest.fail("got past the run id check"))
    for runner in ("local", "kfp-local"):
        code, out, err = actsearch("run", f"--runner={runner}", f"--run_id={run_id}", f"--pipeline_root={root}")
        assert code == 2 and out == ""
        assert err.startswith(f"actsearch run: error: {message}") and err.count("\n") == 1


def test_a_run_id_taken_by_a_kfp_local_run_is_refused_too(tmp_path, monkeypatch, actsearch):
    root = tmp_path / "root"
    (root / "kfp-local" / "k1").mkdir(parents=True)
    monkeypatch.setattr(cli, "check_functions", lambda config: pytest.fail("got past the run id check"))
    code, _, err = actsearch("run", "--run_id=k1", f"--pipeline_root={root}")
    assert code == 2 and "--run_id: run 'k1' already exists" in err


def test_compile_output_problems_are_named_before_any_work(tmp_path, monkeypatch, actsearch):
    (tmp_path / "afile").write_text("x")
    monkeypatch.setattr(cli, "build_config", lambda: pytest.fail("got past the --output check"))
    code, _, err = actsearch("compile", f"--output={tmp_path / 'afile' / 'sub' / 'p.yaml'}")
    assert code == 2
    assert f"'{tmp_path / 'afile'}' is a file, not a directory" in err and "File exists" not in err
    code, _, err = actsearch("compile", f"--output={tmp_path / 'p.txt'}")
    assert code == 2 and "must end with .yaml or .yml" in err and ".json also works" in err
    (tmp_path / "dir.yaml").mkdir()
    code, _, err = actsearch("compile", f"--output={tmp_path / 'dir.yaml'}")
    assert code == 2 and "is a directory; name the file to write" in err


@pytest.mark.parametrize("flag,message", [
    ("--learning_rate=nan", "--learning_rate must be a finite number > 0, got nan"),
    ("--learning_rate=inf", "--learning_rate must be a finite number > 0, got inf"),
    ("--weight_decay=-1", "--weight_decay must be a finite number >= 0 (0: none), got -1.0"),
    ("--warmup_epochs=-5", "--warmup_epochs must be a finite number >= 0 (0: no warm-up), got -5.0"),
])
def test_bad_numbers_are_usage_errors_naming_the_flag(tmp_path, monkeypatch, actsearch, flag, message):
    monkeypatch.setattr(cli, "check_functions", lambda config: pytest.fail("got past the value checks"))
    code, out, err = actsearch("run", flag, f"--pipeline_root={tmp_path / 'root'}")
    assert code == 2 and out == ""
    assert err == f"actsearch run: error: {message}\n" and "TrainConfig" not in err


def test_help_gives_each_flag_its_default_per_preset():
    from pipeline import config as config_lib

    assert cli.preset_defaults("max_trials") == " Default: 30 (cifar10); 24 (demo); 1000 (paper)."
    assert cli.preset_defaults("alpha") == f" Default: {config_lib.PipelineConfig().alpha}."  # no preset sets it
    assert cli.preset_defaults("resources") == " Default: per preset, see pipeline/config.py."
    assert cli.FLAGS["max_trials"].help.endswith("Default: 30 (cifar10); 24 (demo); 1000 (paper).")
    assert cli.FLAGS["augment"].help.endswith("Default: True (cifar10); False (demo); True (paper).")


@pytest.mark.parametrize("arguments, code", [(["--help"], 0), (["run", "--help"], 0), (["--nosuchflag", "--help"], 1)])
def test_asking_for_help_exits_0_and_a_usage_error_does_not(arguments, code):
    script = f"import sys\nfrom pipeline import cli\nsys.argv = ['actsearch', *{arguments!r}]\ncli.run_main()\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert done.returncode == code, done.stderr[-2000:]
    if code == 0:
        assert "--max_trials: number of search trials" in done.stdout


def _cli_script(*arguments: str) -> list[str]:
    return [sys.executable, "-c", f"import sys\nfrom pipeline import cli\nsys.argv = ['actsearch', *{arguments!r}]\n"
                                  "cli.run_main()\n"]


@pytest.mark.parametrize("arguments, message", [
    (["runs", "--max_trial=3"], "actsearch runs: error: Unknown command line flag 'max_trial'. Did you mean: max_trials"),
    (["run", "--max_trials"], "actsearch run: error: Missing value for flag --max_trials"),
])
def test_a_bad_flag_is_one_line_and_exit_status_2_like_every_usage_error(arguments, message):
    done = subprocess.run(_cli_script(*arguments), capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith(message) and "FATAL" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_runs_into_a_closed_pipe_ends_quietly_with_141(tmp_path):
    fake_run(tmp_path / "root")
    reader, writer = os.pipe()
    os.close(reader)  # like `actsearch runs | head -0`: nobody reads
    done = subprocess.run(_cli_script("runs", f"--pipeline_root={tmp_path / 'root'}"), stdout=writer,
                          stderr=subprocess.PIPE, text=True, cwd=PROJECT_ROOT, timeout=120)
    os.close(writer)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr[-2000:]
    assert done.returncode == 128 + signal.SIGPIPE


def test_a_root_another_run_holds_is_a_usage_error_before_the_banner(tmp_path, monkeypatch, actsearch):
    import fcntl

    import activations.layer

    monkeypatch.setattr(activations.layer, "prefer_wide_vectors", lambda: None)
    root = tmp_path / "root"
    root.mkdir()
    with open(root / ".lock", "w") as lock:  # as a running run holds it
        fcntl.flock(lock, fcntl.LOCK_EX)
        code, out, err = actsearch("run", f"--pipeline_root={root}")
    assert code == 2 and f"another run is using pipeline_root {str(root)!r}" in err
    assert "running" not in out  # no banner for a run that never starts


def test_deliverables_that_cannot_be_copied_fail_in_one_line_saying_the_run_is_done(tmp_path, monkeypatch):
    def full_disk(run_json):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli, "publish", full_disk)
    with pytest.raises(PipelineError, match=r"the run completed and is recorded, but its deliverables could not "
                                            r"be copied .*No space left on device"):
        cli.publish_completed(str(tmp_path / "run.json"))


def test_the_tensorboard_command_is_quoted_for_a_shell(tmp_path, capsys):
    logs = tmp_path / "with space" / "tensorboard"
    run_json = tmp_path / "run.json"
    run_json.write_text(json.dumps({"run_id": "r", "status": "COMPLETE", "results": {"tensorboard": str(logs)}}))
    cli._print_summary(str(run_json))
    line = next(line for line in capsys.readouterr().out.splitlines() if "open it with" in line)
    assert line.endswith(f"--logdir '{logs}'")


def test_run_checks_resources_as_compile_does_and_names_settings_it_does_not_use(tmp_path, monkeypatch, actsearch,
                                                                                 capsys):
    import activations.layer
    from pipeline import local_runner

    class Reached(Exception):
        pass

    def stop_here(self, pipeline, run_id=None):
        raise Reached

    monkeypatch.setattr(activations.layer, "prefer_wide_vectors", lambda: None)
    code, _, err = actsearch("run", f"--pipeline_root={tmp_path / 'a'}", '--resources={"trainr": {"cpu": "2"}}')
    assert code == 2 and "actsearch run: error: --resources:" in err and "'trainr'" in err
    monkeypatch.setattr(local_runner.LocalRunner, "run", stop_here)
    with pytest.raises(Reached):
        actsearch("run", f"--pipeline_root={tmp_path / 'b'}", "--image=registry/a:1", "--resume_root=/mnt/x")
    out = capsys.readouterr().out
    assert ("actsearch: note: --resume_root, --image are for `actsearch compile`; this run (runner local) does not "
            "use them.") in out
    assert "proposes nothing of its own" not in out  # the demo's budget leaves room for a search
    with pytest.raises(Reached):
        actsearch("run", f"--pipeline_root={tmp_path / 'c'}", "--max_trials=4", "--strategy=rl", "--space=swish")
    assert ("--max_trials=4 is no more than the 14 functions the search starts from (6 seed functions + 8 sampled "
            "candidates): the trials train those, and the controller proposes nothing of its own") in capsys.readouterr().out


def test_an_exhaustive_run_says_what_it_leaves_out(tmp_path, monkeypatch, actsearch, capsys):
    import activations.layer
    from pipeline import local_runner

    class Reached(Exception):
        pass

    def stop_here(self, pipeline, run_id=None):
        raise Reached

    monkeypatch.setattr(activations.layer, "prefer_wide_vectors", lambda: None)
    monkeypatch.setattr(local_runner.LocalRunner, "run", stop_here)
    code, _, err = actsearch("run", f"--pipeline_root={tmp_path / 'a'}", "--strategy=exhaustive")
    assert code == 2 and "strategy 'exhaustive' enumerates the Swish paper's core units: add --space=swish" in err
    with pytest.raises(Reached):
        actsearch("run", f"--pipeline_root={tmp_path / 'b'}", "--strategy=exhaustive", "--space=swish")
    out = capsys.readouterr().out
    assert "the exhaustive strategy enumerates core units: the seed functions and sampled candidates are not trained" in out
    assert "holds 6,250 functions (before duplicates are removed); max_trials=24 trains at most 24 of them" in out
    with pytest.raises(Reached):  # a space the budget covers: only the first part of the note
        actsearch("run", f"--pipeline_root={tmp_path / 'c'}", "--strategy=exhaustive", "--space=swish",
                  "--unary_forms=x,tanh(x)", "--binary_forms=x1+x2,max(x1,x2)")
    out = capsys.readouterr().out
    assert "are not trained" in out and "trains at most" not in out
    code, _, err = actsearch("run", f"--pipeline_root={tmp_path / 'd'}", "--strategy=rl", "--space=swish",
                             "--unary_forms=x,cot(x)")
    assert code == 2 and "unary_forms / binary_forms: unknown core-unit forms ['cot(x)']" in err


def test_a_pipeline_root_that_is_a_file_is_named_as_such(tmp_path, monkeypatch, actsearch):
    import activations.layer

    monkeypatch.setattr(activations.layer, "prefer_wide_vectors", lambda: None)
    (tmp_path / "afile").write_text("x")
    code, _, err = actsearch("run", f"--pipeline_root={tmp_path / 'afile'}")
    assert code == 2 and f"pipeline_root {str(tmp_path / 'afile')!r} is a file, not a directory" in err


def test_runs_shows_how_long_a_killed_run_ran_before_the_next_run_records_it(tmp_path, actsearch):
    """The store says RUNNING until the next run on the root; run.json's time (touched with every
    progress line) says when the killed run was last alive."""
    root = tmp_path / "root"
    root.mkdir()
    with MetadataStore(str(root / "metadata.sqlite")) as store:
        store.create_run("killed-1", "toy", str(root))
        started = store.get_run("killed-1").start_time
    (root / "run.json").write_text(json.dumps({"run_id": "killed-1", "status": "running"}))
    os.utime(root / "run.json", (started + 42, started + 42))
    code, out, err = actsearch("runs", f"--pipeline_root={root}")
    assert code == 0, err
    row = out.splitlines()[1].split()
    assert row[:2] == ["killed-1", "INTERRUPTED"] and "42s" in row
