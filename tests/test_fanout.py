"""Beam fan-out: results in order, failures recorded, resume, real worker processes."""

import json
import os

import pytest

from components.fanout import attempts, run_jobs

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
    assert attempts(str(tmp_path), "job1") == 3


def test_ctrl_c_in_a_job_is_not_counted_as_one_of_its_starts(tmp_path, monkeypatch):
    import tests.fanout_toy_jobs as toy

    def interrupted(value, sleep=0.0):
        raise KeyboardInterrupt

    monkeypatch.setattr(toy, "square", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_jobs(_jobs([5]), str(tmp_path))
    assert attempts(str(tmp_path), "job0") == 0 and not (tmp_path / "job0.json").exists()


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


def test_beam_multiprocessing_runs_jobs_in_two_worker_processes(tmp_path, monkeypatch):
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


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="parallelism"):
        run_jobs(_jobs([1]), str(tmp_path), parallelism=0)
    with pytest.raises(ValueError, match="unique"):
        run_jobs(_jobs([1]) * 2, str(tmp_path))
    results = run_jobs([{"id": "bad", "fn": "nocolon", "args": {}}], str(tmp_path))
    assert results[0]["failed"] and "module:function" in results[0]["error"]
