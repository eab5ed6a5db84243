"""Crash accounting of the fan-out: kills of a whole run that was getting on are not held against
its job, lost runs stay out of the statistics, retries and resumes say what they are, and files
cut short by a crash do not fail a step for ever."""

import json
import logging
import os
import signal
import subprocess
import sys

import pytest

from components import fanout
from components.fanout import MAX_STARTS_WITHOUT_RESULT, attempts, execute_job, load_result, run_jobs

HERE = __name__  # the job functions below, resolved to this very module


class Killed(BaseException):
    """Stands for a SIGKILL of the process running a job: not an Exception, so `execute_job`
    neither records a result nor gives the start back, exactly as after a kill."""


def epochs(history: str, total: int, killed_after: int | None = None) -> dict:
    """A training run in miniature: appends one row per epoch to `history` (continuing from the
    rows there), and is killed (`Killed`) after `killed_after` epochs of this start."""
    done = len(open(history).read().splitlines()) if os.path.exists(history) else 0
    for epoch in range(done, total):
        if killed_after is not None and epoch - done >= killed_after:
            raise Killed
        with open(history, "a") as f:
            f.write(f"{epoch}\n")
    return {"epochs": total}


epochs.progress_path = lambda history, **_: history  # the history is the progress signal


def epochs_then_sigkill(history: str, total: int, per_start: int) -> dict:
    """`epochs`, but the whole process is SIGKILLed after `per_start` epochs of each start (the
    OOM killer or a pre-emption taking down a run whose jobs run in its own process)."""
    try:
        return epochs(history, total, killed_after=per_start)
    except Killed:
        os.kill(os.getpid(), signal.SIGKILL)
        raise


epochs_then_sigkill.progress_path = epochs.progress_path


def first_epoch_then_out_of_memory(config: dict, examples_uri: str, train_examples=None) -> dict:
    """A training run killed at every start after its first epoch, while it saves its backup (out of
    memory): as `trainer.train`, it trims its history to its backup's epochs (none: the file goes),
    then logs epoch 0 anew. Its history.csv changes at every start, yet it never gets further."""
    from trainer.train import _Paths

    paths = _Paths(config["output_dir"])
    paths.trim_history(paths.backed_up_epoch())
    header = "" if os.path.exists(paths.history) else "epoch,loss\n"
    with open(paths.history, "a") as f:
        f.write(header + "0,2.3\n")
    raise Killed


def _hooks_of_train_job(fn):
    from components import training_job

    fn.progress_path, fn.progress_count = training_job.progress_path, training_job.progress_count


_hooks_of_train_job(first_epoch_then_out_of_memory)


def _job(history, killed_after=None, total=10, job_id="run"):
    return {"id": job_id, "fn": f"{HERE}:epochs", "args": {"history": str(history), "total": total,
                                                            "killed_after": killed_after}}


def _killed_start(job, work):
    with pytest.raises(Killed):
        execute_job(job, str(work))


def test_kills_of_a_run_that_made_progress_each_time_do_not_write_its_job_off(tmp_path):
    history, work = tmp_path / "history.csv", tmp_path / "work"
    work.mkdir()
    for _ in range(MAX_STARTS_WITHOUT_RESULT + 1):  # more whole-run kills than the limit, each after 2 epochs
        _killed_start(_job(history, killed_after=2), work)
    assert len(history.read_text().splitlines()) == 8
    (result,) = run_jobs([_job(history)], str(work))
    assert result == {"epochs": 10, "job_id": "run", "worker_slot": None, "job_seconds": result["job_seconds"]}
    assert attempts(str(work), "run") == MAX_STARTS_WITHOUT_RESULT + 2


def test_a_job_naming_its_progress_file_in_the_job_dict_is_judged_by_it(tmp_path):
    history, work = tmp_path / "history.csv", tmp_path / "work"
    work.mkdir()
    job = {"id": "run", "fn": "tests.fanout_toy_jobs:square", "args": {"value": 3}, "progress": str(history)}
    assert fanout.progress_path(job) == str(history)
    for epoch in range(MAX_STARTS_WITHOUT_RESULT):  # as three kills after an epoch each
        fanout._count_start(str(work), job)
        history.write_text("x\n" * (epoch + 1))
    assert fanout.starts_without_progress(str(work), job) == 0
    assert run_jobs([job], str(work))[0]["value"] == 9


def test_a_job_that_dies_at_once_every_time_is_still_written_off_after_three_starts(tmp_path):
    history, work = tmp_path / "history.csv", tmp_path / "work"
    work.mkdir()
    for _ in range(MAX_STARTS_WITHOUT_RESULT):
        _killed_start(_job(history, killed_after=0), work)
    assert not history.exists()
    # A later kill after progress would not help it: it is not started a fourth time.
    (result,) = run_jobs([_job(history)], str(work))
    assert result["failed"] and result["process_died"]
    assert "started 3 times without progress and never finished: its process died" in result["error"]
    assert attempts(str(work), "run") == MAX_STARTS_WITHOUT_RESULT and not history.exists()


def test_a_job_that_progressed_once_then_dies_at_once_is_written_off_three_starts_later(tmp_path):
    history, work = tmp_path / "history.csv", tmp_path / "work"
    work.mkdir()
    _killed_start(_job(history, killed_after=3), work)
    for _ in range(MAX_STARTS_WITHOUT_RESULT):
        _killed_start(_job(history, killed_after=0), work)
    (result,) = run_jobs([_job(history)], str(work))
    assert result["process_died"] and len(history.read_text().splitlines()) == 3


def test_a_run_that_rewrites_its_history_and_dies_after_one_epoch_at_every_start_is_written_off(tmp_path):
    work, out = tmp_path / "work", tmp_path / "run"
    work.mkdir()
    out.mkdir()
    job = {"id": "run", "fn": f"{HERE}:first_epoch_then_out_of_memory",
           "args": {"config": {"output_dir": str(out)}, "examples_uri": "/examples"}}
    # The first start got an epoch further than ever; the three after it did not.
    for start in range(MAX_STARTS_WITHOUT_RESULT + 1):
        _killed_start(job, work)
        assert (out / "history.csv").read_text() == "epoch,loss\n0,2.3\n"
        assert fanout.starts_without_progress(str(work), job) == start
    (result,) = run_jobs([job], str(work))  # not started a fifth time
    assert result["process_died"] and "started 3 times without progress" in result["error"]
    assert attempts(str(work), "run") == MAX_STARTS_WITHOUT_RESULT + 1


def test_a_training_run_is_judged_by_the_epochs_of_its_history_not_by_its_size_or_time(tmp_path):
    from components import training_job

    history = tmp_path / "run" / "history.csv"
    run = {"id": "relu-seed0", "fn": "components.training_job:train_job",
           "args": {"config": {"output_dir": str(tmp_path / "run")}, "examples_uri": "/examples"}}
    assert fanout.progress_count(run) == 0  # nothing yet
    history.parent.mkdir()
    history.write_text("epoch,accuracy,loss\n0,0.5,2.1\n1,0.6,1.9\n2,0.7,1.")  # the last row cut by a kill
    assert fanout.progress_count(run) == training_job.progress_count(str(history)) == 3
    history.write_text("epoch,accuracy,loss\n")
    assert fanout.progress_count(run) == 0


def test_an_attempts_file_of_size_and_time_marks_is_still_read(tmp_path):
    history, work = tmp_path / "history.csv", tmp_path / "work"
    work.mkdir()
    (work / "run.attempts").write_text(json.dumps({"starts": 2, "without_progress": 2, "progress": [4, 10 ** 18],
                                                   "failures": 0}))
    assert fanout._start_record(str(work), "run") == {"starts": 2, "without_progress": 2, "progress_max": 0,
                                                      "failures": 0}
    assert fanout.starts_without_progress(str(work), _job(history)) == 2  # no epoch yet: no progress
    history.write_text("0\n")
    assert fanout.starts_without_progress(str(work), _job(history)) == 0
    assert run_jobs([_job(history)], str(work))[0]["epochs"] == 10 and attempts(str(work), "run") == 3


def test_a_worker_death_is_logged_with_the_count_as_it_stands_when_the_job_died(tmp_path, caplog):
    from components.local_workers import WorkerDied

    history, work = tmp_path / "history.csv", tmp_path / "work"
    work.mkdir()
    job = _job(history)
    fanout._count_start(str(work), job)
    fanout._count_start(str(work), job)  # two starts without progress, as recorded at the second one
    with caplog.at_level(logging.WARNING):
        assert fanout._died_jobs(WorkerDied(["run"]), str(work), [job], {"run": None}) == ["run"]
    assert "at its start 2 in a row without progress, of at most 3" in caplog.text
    caplog.clear()
    history.write_text("0\n1\n")  # the start that died got further before it died
    with caplog.at_level(logging.WARNING):
        fanout._died_jobs(WorkerDied(["run"]), str(work), [job], {"run": None})
    assert "job run took its Beam worker process down" in caplog.text
    assert "after getting further than ever, so this start does not count against it" in caplog.text
    assert "in a row" not in caplog.text


def test_training_jobs_name_their_history_csv_as_their_progress(tmp_path):
    from components import tuner

    trial = tuner._training_job("trial_0_abc", "relu(x)", "/examples", {"epochs": 3}, None, str(tmp_path))
    assert fanout.progress_path(trial) == str(tmp_path / "trials" / "trial_0_abc" / "history.csv")
    run = {"id": "relu-seed0", "fn": "components.training_job:train_job",
           "args": {"config": {"output_dir": "runs/relu"}, "examples_uri": "/examples"}}
    assert fanout.progress_path(run) == os.path.abspath("runs/relu/history.csv")
    run["args"]["config"] = {"output_dir": None}
    assert fanout.progress_path(run) is None
    assert fanout.progress_path({"id": "bad", "fn": "nocolon"}) is None  # fails when run, with its own error


def test_a_lost_run_stays_out_of_the_statistics_but_a_raised_one_counts_at_chance(tmp_path):
    from components.statistics import evaluate
    from components.trainer import lost_runs_note, read_runs, run_record

    relu, swish = {"function": "relu", "kind": "baseline"}, {"function": "swish", "kind": "baseline"}
    died = {"failed": True, "process_died": True, "error": "started 3 times without progress and never finished"}
    records = [run_record(relu, 0, dict(died, num_classes=10), "runs/r0")]
    records += [run_record(relu, seed, {"test_accuracy": acc, "best_val_accuracy": acc, "num_classes": 10}, "r")
                for seed, acc in ((1, 0.983), (2, 0.978))]
    records += [run_record(swish, seed, {"test_accuracy": acc, "best_val_accuracy": acc, "num_classes": 10}, "s")
                for seed, acc in ((0, 0.98), (1, 0.981), (2, 0.979))]
    lost = records[0]
    assert lost["lost"] and not lost["diverged"] and lost["test_accuracy"] is None
    assert lost["lost_reason"].startswith("started 3 times") and lost["divergence_reason"] is None
    raised = run_record(swish, 3, {"failed": True, "error": "ModelError: bad"}, "s3")
    assert raised["diverged"] and not raised["lost"] and raised["divergence_reason"] == "ModelError: bad"

    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert len(read_runs(str(tmp_path), include_lost=True)) == 6
    runs = read_runs(str(tmp_path))
    assert [(r["function"], r["seed"]) for r in runs if r["function"] == "relu"] == [("relu", 1), ("relu", 2)]
    evaluation = evaluate(runs, baseline="relu", min_seeds=2)
    (base,) = [f for f in evaluation.functions if f.function == "relu"]
    assert base.values == (0.983, 0.978) and base.n_diverged == 0  # not [0.1, 0.983, 0.978], "1 diverged"
    assert lost_runs_note(records) == ("1 run left out of the statistics because the training process died at "
                                       "every start (out of memory or killed, not a property of the function): "
                                       "relu seed 0")
    assert lost_runs_note(records[1:]) == ""


def test_the_first_of_two_attempts_of_a_failed_job_says_it_is_tried_once_more(tmp_path):
    seen = []
    run_jobs([{"id": "job0", "fn": "tests.fanout_toy_jobs:square", "args": {"value": -1}}], str(tmp_path),
             progress=lambda done, total, result: seen.append((done, total, fanout.retry_note(result))))
    assert seen == [(1, 1, "; trying it once more"), (1, 1, "")]
    assert "retrying" not in load_result(str(tmp_path), "job0")  # a note for the callback, not stored


def test_a_retry_is_decided_by_failures_not_by_kills_of_the_run(tmp_path):
    # Killed twice while it ran (no progress signal), then it raised: still run once more.
    (tmp_path / "job0.attempts").write_text("2")
    seen = []
    run_jobs([{"id": "job0", "fn": "tests.fanout_toy_jobs:square", "args": {"value": -1}}], str(tmp_path),
             progress=lambda done, total, result: seen.append(fanout.retry_note(result)))
    assert seen == ["; trying it once more", ""] and attempts(str(tmp_path), "job0") == 4


def test_the_tuner_says_which_failed_trial_is_tried_once_more(tmp_path, monkeypatch):
    from conftest import run_tuner

    def relu_fails(config, examples_uri, train_examples=None):
        if config["activation"] == "relu(x)":
            raise RuntimeError("model cannot be built")
        return {"best_val_accuracy": 0.5}

    events = []
    run_tuner(tmp_path, monkeypatch, relu_fails, max_trials=4, progress=events.append)
    lines = [str(event) for event in events if "relu(x)" in str(event)]
    assert lines[0].startswith("[tuner] trial 0 (1 of 4) [seed] relu(x): failed (RuntimeError: model cannot be "
                               "built); trying it once more; best so far n/a")
    assert lines[1].startswith("[tuner] trial 0 (1 of 4) [seed] relu(x): failed (RuntimeError: model cannot be "
                               "built); best so far n/a")


def _run_trainer(tmp_path, monkeypatch, job, events, seeds=2):
    from components import example_gen, training_job
    from components.base import Artifact, ExecutorContext
    from components.trainer import TrainerExecutor

    job.progress_path = training_job.progress_path  # as the real train_job names its history.csv
    monkeypatch.setattr(training_job, "train_job", job)
    monkeypatch.setattr(example_gen, "read_statistics", lambda examples: {"num_classes": 10})
    out = Artifact("TrainedModels", str(tmp_path / "trained"))
    os.makedirs(out.uri, exist_ok=True)
    executor = TrainerExecutor(ExecutorContext(component_id="trainer", resume_dir=str(tmp_path / "resume"),
                                               on_progress=events.append))
    executor.Do({"examples": [Artifact("Examples", str(tmp_path / "examples"))]}, {"trained_models": [out]},
                {"train_config": {}, "baselines": ["relu"], "functions": [], "top_k": 0, "seeds": seeds,
                 "parallelism": 1, "beam_options": []})
    return out


def test_the_trainer_says_what_a_resumed_batch_found_and_leaves_a_lost_run_out(tmp_path, monkeypatch):
    from components.trainer import read_runs, run_id

    calls = []

    def flaky(config, examples_uri, train_examples=None):
        calls.append(config["seed"])
        if calls.count(0) == 1 and config["seed"] == 0:
            raise OSError("disk full")
        return {"test_accuracy": 0.98, "best_val_accuracy": 0.98, "config": config, "num_classes": 10}

    events = []
    _run_trainer(tmp_path, monkeypatch, flaky, events)
    lines = [str(e) for e in events]
    assert any(line.startswith("[trainer] run 1 of 2: failed (OSError: disk full); trying it once more")
               for line in lines)
    assert calls == [0, 1, 0]

    # Resumed with everything done: it says so (it printed nothing before).
    events.clear()
    _run_trainer(tmp_path, monkeypatch, flaky, events)
    assert "[trainer] 2 of 2 runs already done by an earlier attempt (2/2)" in [str(e) for e in events]

    # A third seed whose process died three times without progress: written off, not "already
    # done by an earlier attempt", and left out of the runs the Evaluator reads.
    results = tmp_path / "resume" / "results"
    (results / f"{run_id('relu', 2)}.attempts").write_text("3")
    events.clear()
    out = _run_trainer(tmp_path, monkeypatch, flaky, events, seeds=3)
    lines = [str(e) for e in events]
    assert "[trainer] 2 of 3 runs already done by an earlier attempt (2/3)" in lines
    assert any(line.startswith("[trainer] run 3 of 3: failed (started 3 times without progress and never "
                               "finished: its process died") for line in lines)
    assert any("1 run left out of the statistics" in line and "relu seed 2" in line for line in lines)
    assert [r["seed"] for r in read_runs(out)] == [0, 1]
    assert out.properties["lost_runs_note"].endswith("relu seed 2")
    assert calls == [0, 1, 0]  # nothing trained again


@pytest.mark.parametrize("content", ["", '{"value": 9, "job_'])
def test_a_result_cut_short_by_a_crash_is_run_again_with_a_warning_naming_it(tmp_path, caplog, content):
    run_jobs([{"id": "job0", "fn": "tests.fanout_toy_jobs:square", "args": {"value": 3}}], str(tmp_path))
    (tmp_path / "job0.json").write_text(content)
    with caplog.at_level(logging.WARNING):
        (result,) = run_jobs([{"id": "job0", "fn": "tests.fanout_toy_jobs:square", "args": {"value": 3}}],
                             str(tmp_path))
    assert result["value"] == 9 and attempts(str(tmp_path), "job0") == 2
    assert str(tmp_path / "job0.json") in caplog.text and "treated as missing" in caplog.text
    assert (tmp_path / "job0.json.unreadable").read_text() == content  # kept for a look
    assert caplog.text.count("is unreadable") == 1  # reported once, not at every look


@pytest.mark.parametrize("content", ["", '{"starts": 2, "with', "[1]"])
def test_an_unreadable_attempts_file_counts_as_no_start(tmp_path, caplog, content):
    (tmp_path / "job0.attempts").write_text(content)
    with caplog.at_level(logging.WARNING):
        assert attempts(str(tmp_path), "job0") == 0
    assert str(tmp_path / "job0.attempts") in caplog.text
    (result,) = run_jobs([{"id": "job0", "fn": "tests.fanout_toy_jobs:square", "args": {"value": 2}}], str(tmp_path))
    assert result["value"] == 4 and attempts(str(tmp_path), "job0") == 1


def test_files_are_on_the_disk_before_they_are_renamed(tmp_path, monkeypatch):
    order = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (order.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (order.append("replace"), real_replace(a, b))[1])
    fanout._write_json(str(tmp_path / "x.json"), {"a": 1})
    assert order == ["fsync", "replace"] and json.loads((tmp_path / "x.json").read_text()) == {"a": 1}


def test_the_search_records_keep_every_trial_when_a_trial_result_is_cut_short(tmp_path, monkeypatch):
    from conftest import run_tuner

    def job(config, examples_uri, train_examples=None):
        return {"best_val_accuracy": 0.5, "history": {"val_accuracy": [0.4, 0.5]}}

    run_tuner(tmp_path, monkeypatch, job, max_trials=4)
    cut = sorted((tmp_path / "resume" / "results").glob("trial_*.json"))[0]
    cut.write_text('{"best_val_accuracy": 0.')
    out = run_tuner(tmp_path, monkeypatch, job, max_trials=4)  # resumed: every trial ended before
    trials = [json.loads(line) for line in open(out.path("trials.jsonl"))]
    assert len(trials) == 4 and [t["fitness"] for t in trials] == [0.5] * 4
    assert sum(t["history"] == {} for t in trials) == 1
    assert sum(t["history"] == {"val_accuracy": [0.4, 0.5]} for t in trials) == 3


def test_worker_processes_report_the_retry_as_the_first_of_two_attempts(tmp_path, monkeypatch):
    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    seen = []
    jobs = [{"id": f"job{i}", "fn": "tests.fanout_toy_jobs:square", "args": {"value": value}}
            for i, value in enumerate([-1, 2])]
    results = run_jobs(jobs, str(tmp_path), parallelism=2, poll_seconds=0.1,
                       progress=lambda done, total, result: seen.append((result["job_id"], fanout.retry_note(result))))
    assert results[0]["failed"] and results[1]["value"] == 4
    assert sorted(seen) == [("job0", ""), ("job0", "; trying it once more"), ("job1", "")]
    assert seen.index(("job0", "; trying it once more")) < seen.index(("job0", ""))


KILLED_RUN = """
import json, sys
from components.fanout import run_jobs
job = {"id": "final_run", "fn": "tests.test_crash_accounting:epochs_then_sigkill",
       "args": {"history": sys.argv[2], "total": 13, "per_start": int(sys.argv[3])}}
print(json.dumps(run_jobs([job], sys.argv[1])))
"""


def _run_killable(work, history, per_start):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, "-c", KILLED_RUN, str(work), str(history), str(per_start)], cwd=root,
                          capture_output=True, text=True, timeout=120)


def test_a_run_sigkilled_four_times_while_its_job_got_on_still_finishes_it(tmp_path):
    work, history = tmp_path / "work", tmp_path / "history.csv"
    for kill in range(1, 5):  # 3 epochs a start: killed at 3, 6, 9 and 12 of 13 epochs
        done = _run_killable(work, history, per_start=3)
        assert done.returncode == -signal.SIGKILL, done.stderr
        assert len(history.read_text().splitlines()) == 3 * kill
    done = _run_killable(work, history, per_start=3)
    assert done.returncode == 0, done.stderr
    (result,) = json.loads(done.stdout.splitlines()[-1])
    assert result["epochs"] == 13 and not result.get("failed")
    assert attempts(str(work), "final_run") == 5


def test_a_run_sigkilled_three_times_without_progress_writes_its_job_off(tmp_path):
    work, history = tmp_path / "work", tmp_path / "history.csv"
    for _ in range(MAX_STARTS_WITHOUT_RESULT):
        assert _run_killable(work, history, per_start=0).returncode == -signal.SIGKILL
    done = _run_killable(work, history, per_start=13)
    (result,) = json.loads(done.stdout.splitlines()[-1])
    assert result["process_died"] and not history.exists()
