"""Beam fan-out: results in order, failures recorded, resume, real worker processes."""

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from components.fanout import LOCAL_RUNNER_SETTINGS, attempts, beam_pipeline, check_beam_options, run_jobs
from components.local_workers import WORKERS_DIR

JOB = "tests.fanout_toy_jobs:square"


def _jobs(values, sleep=0.0):
    return [{"id": f"job{i}", "fn": JOB, "args": {"value": v, "sleep": sleep}} for i, v in enumerate(values)]


def test_in_process_results_come_back_in_order_with_failures_recorded(tmp_path):
    seen = []
    results = run_jobs(_jobs([3, -1, 2]), str(tmp_path), progress=lambda d, t, r: seen.append((d, t)))
    assert [r.get("value") for r in results] == [9, None, 4]
    assert results[1]["failed"] and "negative input -1" in results[1]["error"]
    # The job that raised was run once more before its failure was final.
    assert [attempts(str(tmp_path), f"job{i}") for i in range(3)] == [1, 2, 1]
    assert seen == [(1, 3), (2, 3), (3, 3), (3, 3)]
    run_jobs(_jobs([3, -1, 2]), str(tmp_path))  # a later resume does not start it a third time
    assert attempts(str(tmp_path), "job1") == 2


def test_a_job_that_keeps_killing_its_process_is_recorded_as_failed(tmp_path):
    # Two starts without a result (two kills of the run, or of its process) still get a third...
    (tmp_path / "job0.attempts").write_text("2")
    (result,) = run_jobs(_jobs([5]), str(tmp_path))
    assert result["value"] == 25 and attempts(str(tmp_path), "job0") == 3
    # ...but three (as after out-of-memory kills) are the end: it is not started a fourth time.
    (tmp_path / "job1.attempts").write_text("3")
    (_, result) = run_jobs(_jobs([5, 6]), str(tmp_path))
    assert result["failed"] and "started 3 times and never finished" in result["error"]
    assert result["process_died"]  # an infrastructure failure, which the Trainer keeps out of the statistics
    assert attempts(str(tmp_path), "job1") == 3


def test_ctrl_c_in_a_job_is_not_counted_as_one_of_its_starts(tmp_path, monkeypatch):
    import tests.fanout_toy_jobs as toy

    def interrupted(value, sleep=0.0):
        raise KeyboardInterrupt

    monkeypatch.setattr(toy, "square", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_jobs(_jobs([5]), str(tmp_path))
    assert attempts(str(tmp_path), "job0") == 0 and not (tmp_path / "job0.json").exists()


def _wrapped_ctrl_c():
    """What TensorFlow raises when Ctrl-C lands in a Python callback it called."""
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt as stop:
        raise SystemError("<built-in method of PyCapsule object> returned a result with an "
                          "exception set") from stop


def test_ctrl_c_wrapped_by_tensorflow_stops_the_fan_out_and_is_not_a_failed_job(tmp_path, monkeypatch):
    import tests.fanout_toy_jobs as toy

    monkeypatch.setattr(toy, "square", lambda value, sleep=0.0: _wrapped_ctrl_c())
    with pytest.raises(KeyboardInterrupt, match="job job0 was stopped") as info:
        run_jobs(_jobs([5, 6]), str(tmp_path))
    assert isinstance(info.value.__cause__, SystemError)
    assert attempts(str(tmp_path), "job0") == 0 and not (tmp_path / "job0.json").exists()
    assert not (tmp_path / "job1.json").exists()        # the fan-out stopped at once


def test_only_errors_caused_by_ctrl_c_count_as_interruptions():
    from components.base import interrupted_by_user

    assert interrupted_by_user(KeyboardInterrupt())
    with pytest.raises(SystemError) as wrapped:
        _wrapped_ctrl_c()
    assert interrupted_by_user(wrapped.value)
    try:                                               # raised while handling one: also stopped
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("cleanup failed")
    except RuntimeError as during:
        assert interrupted_by_user(during)
    plain = ValueError("bad")
    plain.__context__ = TypeError("earlier")
    assert not interrupted_by_user(plain) and not interrupted_by_user(SystemExit(1))
    looped = RuntimeError("a")
    looped.__context__ = RuntimeError("b")
    looped.__context__.__context__ = looped            # a cycle ends the walk
    assert not interrupted_by_user(looped)


def test_interrupted_fan_out_reruns_only_missing_jobs(tmp_path):
    run_jobs(_jobs([1, 2]), str(tmp_path))
    os.remove(tmp_path / "job1.json")
    # Mark job0's stored result so a re-run would be visible.
    stored = json.loads((tmp_path / "job0.json").read_text())
    stored["marker"] = True
    (tmp_path / "job0.json").write_text(json.dumps(stored))
    results = run_jobs(_jobs([1, 2]), str(tmp_path))
    assert results[0]["marker"] is True
    assert results[1]["value"] == 4 and "marker" not in results[1]


def test_beam_multiprocessing_runs_jobs_in_two_worker_processes(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))
    progress = []
    results = run_jobs(
        _jobs([1, 2, 3, 4], sleep=0.5), str(tmp_path), parallelism=2, progress=lambda d, t, r: progress.append(d)
    )
    assert [r["value"] for r in results] == [1, 4, 9, 16]
    assert os.getpid() not in {r["pid"] for r in results}
    assert len({r["pid"] for r in results}) == 2
    # Each worker process numbered itself with a slot of its own (the GPU it would take).
    slots = {r["pid"]: r["worker_slot"] for r in results}
    assert sorted(slots.values()) == [0, 1]
    assert progress[-1] == 4
    # The workers' start-up notes (TensorFlow's native ones, Beam's) stay out of the terminal.
    printed = capfd.readouterr().err
    for note in ("oneDNN custom operations", "Could not find cuda drivers", "failed call to cuInit",
                 "Logging handler created", "No semi_persistent_directory", "Discarding unparseable args",
                 "apitools not found"):
        assert note not in printed


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="parallelism"):
        run_jobs(_jobs([1]), str(tmp_path), parallelism=0)
    with pytest.raises(ValueError, match="unique"):
        run_jobs(_jobs([1]) * 2, str(tmp_path))
    results = run_jobs([{"id": "bad", "fn": "nocolon", "args": {}}], str(tmp_path))
    assert results[0]["failed"] and "module:function" in results[0]["error"]


@pytest.mark.parametrize("options", [["--direct_num_workers=2"], ["--direct_running_mode=multi_threading"],
                                     ["--direct_runner_bundle_repeat=1"], ["--direct_num_workers", "2"]])
def test_the_local_runners_worker_settings_are_refused_naming_parallel_trials(tmp_path, options):
    # Outside the cache key, they would run jobs side by side with full thread pools (other results).
    with pytest.raises(ValueError, match=f"beam_options: '{options[0]}.*--parallel_trials"):
        run_jobs(_jobs([1]), str(tmp_path), beam_options=options)
    with pytest.raises(ValueError, match=f"'{options[0]}.*--parallel_trials"):
        beam_pipeline(options)
    assert not list(tmp_path.iterdir())  # refused before any job started
    check_beam_options(["--runner=DataflowRunner", *options])  # another runner's business


@pytest.mark.parametrize("runner", [["--runner=DirectRunner"], ["--runner=direct"], ["--runner", "DirectRunner"],
                                    ["--runner=SwitchingDirectRunner"], ["--runner=BundleBasedDirectRunner"],
                                    ["--runner=apache_beam.runners.portability.fn_api_runner.FnApiRunner"],
                                    ["--runner=DataflowRunner", "--runner=directrunner"]])
def test_a_named_local_runner_gets_the_same_refusal(tmp_path, runner):
    # Named, Beam's local runner reads the same DirectOptions: two full-thread jobs side by side.
    with pytest.raises(ValueError, match=f"'--direct_num_workers=2' is not allowed with --runner=.*--parallel_trials"):
        run_jobs(_jobs([1]), str(tmp_path), beam_options=[*runner, "--direct_num_workers=2"])
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("runner", [["--runner=PrismRunner"], ["--runner=FlinkRunner"], ["--runner=DirectRunner", "--runner=FlinkRunner"]])
def test_other_runners_keep_their_own_worker_settings(runner):
    check_beam_options([*runner, "--direct_num_workers=2"])  # not read by these runners


def test_the_refused_settings_are_beams_and_the_others_leave_the_workers_alone():
    from apache_beam.options.pipeline_options import DirectOptions

    parser = argparse.ArgumentParser()
    DirectOptions._add_argparse_args(parser)
    direct = {option for action in parser._actions for option in action.option_strings} - {"-h", "--help"}
    # Read in apache_beam's fn_runner.py: these only concern the old DirectRunner, docker
    # environments or split tests. A new DirectOptions option needs the same look.
    harmless = {"--no_direct_runner_use_stacked_bundle", "--direct_embed_docker_python", "--direct_test_splits"}
    assert direct == set(LOCAL_RUNNER_SETTINGS) | harmless


def _live_processes_in_group(group: int) -> list[str]:
    """Processes of a process group that are not zombies (a zombie has ended; its parent is gone)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            found.append(pid)
    return found


DRIVER = """
import sys
from components.fanout import run_jobs
jobs = [{"id": f"job{i}", "fn": "tests.fanout_toy_jobs:square", "args": {"value": i, "sleep": 60.0}} for i in range(3)]
try:
    run_jobs(jobs, sys.argv[1], parallelism=2, poll_seconds=0.1)
except KeyboardInterrupt:
    print("driver: interrupted", file=sys.stderr)
    sys.exit(130)
"""


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="lists processes through /proc")
def test_ctrl_c_stops_the_worker_processes_quietly_and_loses_nothing(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run_jobs(_jobs([0]), str(tmp_path))  # job0 finished in an earlier run
    finished = (tmp_path / "job0.json").read_text()
    # Ctrl-C in a terminal reaches the whole foreground process group: driver and workers.
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path)], cwd=root, stderr=subprocess.PIPE,
                              text=True, start_new_session=True)
    deadline = time.time() + 60
    while attempts(str(tmp_path), "job1") + attempts(str(tmp_path), "job2") < 2 and time.time() < deadline:
        time.sleep(0.1)
    assert time.time() < deadline, "the two workers never started their jobs"
    workers = [int(name) for name in os.listdir(tmp_path / WORKERS_DIR) if name.isdigit()]
    os.killpg(driver.pid, signal.SIGINT)
    _, stderr = driver.communicate(timeout=60)
    assert driver.returncode == 130
    for noise in ("Traceback", "RpcError", "Exception in thread", "KeyboardInterrupt"):
        assert noise not in stderr
    assert stderr.rstrip().endswith("driver: interrupted")
    assert len(workers) == 2 and not _live_processes_in_group(driver.pid)
    # The jobs that were stopped did not use up one of their starts; what finished stays.
    assert attempts(str(tmp_path), "job1") == attempts(str(tmp_path), "job2") == 0
    assert not (tmp_path / "job1.json").exists() and (tmp_path / "job0.json").read_text() == finished
    # Running again continues: the same jobs (quick this time), job0 not run again.
    results = run_jobs(_jobs([0, 1, 2]), str(tmp_path))
    assert [r["value"] for r in results] == [0, 1, 4] and (tmp_path / "job0.json").read_text() == finished
    assert [attempts(str(tmp_path), f"job{i}") for i in range(3)] == [1, 1, 1]



@pytest.mark.skipif(not os.path.isdir("/proc"), reason="lists processes through /proc")
def test_worker_processes_end_when_their_driver_is_killed(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    stub = tmp_path / "no_tensorflow" / "tensorflow"  # as below: the workers need no TensorFlow here
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('not in this test')\n")
    path = os.pathsep.join(filter(None, [str(tmp_path / "no_tensorflow"), os.environ.get("PYTHONPATH")]))
    work = tmp_path / "work"
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(work)], cwd=root, env=dict(os.environ, PYTHONPATH=path),
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 60
        while attempts(str(work), "job0") + attempts(str(work), "job1") + attempts(str(work), "job2") < 2:
            assert time.time() < deadline, "the two workers never started their jobs"
            time.sleep(0.1)
        os.kill(driver.pid, signal.SIGKILL)  # the driver alone, with no chance to stop its workers
        driver.wait(timeout=30)
        deadline = time.time() + 20  # the jobs sleep 60 s
        while _live_processes_in_group(driver.pid) and time.time() < deadline:
            time.sleep(0.2)
        assert not _live_processes_in_group(driver.pid), "worker processes outlived their driver"
        assert not list(work.glob("job*.json"))  # nobody finished a job for a driver that is gone
    finally:
        os.killpg(driver.pid, signal.SIGKILL) if _live_processes_in_group(driver.pid) else None


CRASH_DRIVER = """
import json, sys
from components.fanout import run_jobs
work = sys.argv[1]
jobs = [{"id": "crash", "fn": "tests.fanout_toy_jobs:crash", "args": {}},
        {"id": "waits", "fn": "tests.fanout_toy_jobs:square", "args": {"value": 3, "wait_for": work + "/crash.json"}},
        {"id": "quick", "fn": "tests.fanout_toy_jobs:square", "args": {"value": 2}}]
reports = []
results = run_jobs(jobs, work, parallelism=2, poll_seconds=0.1, progress=lambda d, t, r: reports.append([d, t, r]))
print(json.dumps({"results": results, "progress": reports}))
"""


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="lists processes through /proc")
def test_a_job_that_takes_its_worker_process_down_is_recorded_as_failed_and_the_others_finish(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # The workers of each of the four pipelines would start TensorFlow (`_share_machine`): a stub
    # that fails to import spares that (about 8 s in all instead of 27); the fan-out does not need it.
    stub = tmp_path / "no_tensorflow" / "tensorflow"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('not in this test')\n")
    path = os.pathsep.join(filter(None, [str(tmp_path / "no_tensorflow"), os.environ.get("PYTHONPATH")]))
    work = tmp_path / "work"
    driver = subprocess.Popen([sys.executable, "-c", CRASH_DRIVER, str(work)], cwd=root,
                              env=dict(os.environ, PYTHONPATH=path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        stdout, stderr = driver.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.communicate()
        pytest.fail("the driver hangs once a worker process died")
    assert driver.returncode == 0, stderr
    assert not _live_processes_in_group(driver.pid)  # no worker process left behind
    out = json.loads(stdout.splitlines()[-1])
    crash, waits, quick = out["results"]
    # The crash took its process down at each of its three starts, then it was recorded as failed.
    assert crash["failed"] and "started 3 times and never finished: its process died" in crash["error"]
    assert attempts(str(work), "crash") == 3
    assert stderr.count("job crash took its Beam worker process down") == 3
    for noise in ("Traceback", "RpcError", "Exception in thread"):
        assert noise not in stderr
    # The others finished. The one that waits for the crash's result was stopped each time a
    # pipeline it had started in ended with the crash: those starts were given back.
    assert (waits["value"], quick["value"]) == (9, 4)
    assert attempts(str(work), "waits") == attempts(str(work), "quick") == 1
    assert [(done, total) for done, total, _ in out["progress"]] == [(1, 3), (2, 3), (3, 3)]
    order = [result["job_id"] for _, _, result in out["progress"]]
    assert sorted(order) == ["crash", "quick", "waits"] and order.index("crash") < order.index("waits")


def test_a_ctrl_c_swallowed_inside_a_job_still_stops_the_fan_out(tmp_path):
    import signal

    from components import base

    previous, previous_hook = signal.getsignal(signal.SIGINT), sys.unraisablehook
    try:
        base.remember_ctrl_c()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)   # raises as Python's own handler does...
            time.sleep(1)
        # ...and is remembered, so a job whose KeyboardInterrupt was swallowed leaves no result.
        with pytest.raises(KeyboardInterrupt, match="job job0 was stopped"):
            run_jobs(_jobs([5]), str(tmp_path))
        assert attempts(str(tmp_path), "job0") == 0 and not (tmp_path / "job0.json").exists()
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = previous_hook
        base._CTRL_C["seen"] = False
    assert run_jobs(_jobs([5]), str(tmp_path))[0]["value"] == 25


_CTRL_C_IN_A_FINALISER = """
import gc, os, signal, sys, time
from components.base import remember_ctrl_c
if sys.argv[1] == "actsearch":
    remember_ctrl_c()

class Handle:
    def __del__(self):  # as TensorFlow's and JAX's finalisers and gc callbacks do
        signal.raise_signal(signal.SIGINT)
        sum(range(1000))  # the handler raises here, where Python can only print and go on

try:
    Handle()
    for _ in range(100):
        time.sleep(0.01)
    print("went on")
except KeyboardInterrupt:
    print("stopped")
"""


@pytest.mark.parametrize("handler", ["python", "actsearch"])
def test_a_ctrl_c_that_lands_in_a_finaliser_is_delivered_again(handler):
    done = subprocess.run([sys.executable, "-c", _CTRL_C_IN_A_FINALISER, handler], capture_output=True,
                          text=True, timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)))
    if handler == "python":  # what the CLI saw before: a traceback, and the program goes on
        assert done.stdout.strip() == "went on" and "Exception ignored in" in done.stderr
    else:
        assert done.stdout.strip() == "stopped", done.stderr
        assert done.stderr == ""
