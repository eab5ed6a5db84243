"""Orchestration: component specs, DAG validation, local runner, caching, resume, metadata."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import signal
import textwrap
import time

import pytest

from components.base import (ARTIFACT_TYPES, Artifact, BaseExecutor, Component,
                             ComponentDefinitionError, ComponentSpec, ExecutorContext, InputSpec,
                             OutputSpec, Parameter, ParameterError, register_artifact_type)
from pipeline.dag import Pipeline, PipelineDefinitionError
from pipeline.local_runner import LocalRunner, PipelineError
from pipeline.metadata import MetadataStore
from conftest import run_and_signal

register_artifact_type("Numbers", "A JSON list of numbers (toy type for tests).")


# ---- toy components ----------------------------------------------------------------------
# Executors count their invocations by appending to $TOY_COUNTER_DIR/<component_id>, and fail
# on demand: TOY_FAIL=<id> raises, TOY_INTERRUPT=<id> raises KeyboardInterrupt,
# TOY_KILL=<id> ends the process abruptly (like `kill -9`). None of these enter the cache key.

def _count(context: ExecutorContext) -> None:
    with open(os.path.join(os.environ["TOY_COUNTER_DIR"], context.component_id), "a") as f:
        f.write("x\n")


def _maybe_fail(context: ExecutorContext) -> None:
    cid = context.component_id
    if os.environ.get("TOY_FAIL") == cid:
        raise RuntimeError(f"boom in {cid}")
    if os.environ.get("TOY_INTERRUPT") == cid:
        raise KeyboardInterrupt
    if os.environ.get("TOY_WRAPPED_INTERRUPT") == cid:   # as TensorFlow hands Ctrl-C back
        raise SystemError("returned a result with an exception set") from KeyboardInterrupt()
    if os.environ.get("TOY_KILL") == cid:
        os._exit(9)


def _read(artifact: Artifact) -> list[float]:
    with open(artifact.path("numbers.json")) as f:
        return json.load(f)


def _write(artifact: Artifact, numbers: list[float]) -> None:
    with open(artifact.path("numbers.json"), "w") as f:
        json.dump(numbers, f)
    artifact.properties["count"] = len(numbers)


class SourceSpec(ComponentSpec):
    OUTPUTS = {"numbers": OutputSpec("Numbers")}
    PARAMETERS = {"n": Parameter(int, default=3)}


class SourceExecutor(BaseExecutor):
    def Do(self, input_dict, output_dict, exec_properties):
        _count(self.context)
        _write(output_dict["numbers"][0], list(range(1, exec_properties["n"] + 1)))


class Source(Component):
    SPEC_CLASS, EXECUTOR_CLASS = SourceSpec, SourceExecutor


class ScaleSpec(ComponentSpec):
    INPUTS = {"numbers": InputSpec("Numbers")}
    OUTPUTS = {"scaled": OutputSpec("Numbers")}
    PARAMETERS = {"factor": Parameter(float, default=2.0),
                  "mode": Parameter(str, default="mul", choices=("mul", "add"))}


class ScaleExecutor(BaseExecutor):
    VERSION = "1"

    def Do(self, input_dict, output_dict, exec_properties):
        _count(self.context)
        _maybe_fail(self.context)
        f = exec_properties["factor"]
        numbers = _read(input_dict["numbers"][0])
        _write(output_dict["scaled"][0],
               [x * f if exec_properties["mode"] == "mul" else x + f for x in numbers])


class Scale(Component):
    SPEC_CLASS, EXECUTOR_CLASS = ScaleSpec, ScaleExecutor


class SumSpec(ComponentSpec):
    INPUTS = {"numbers": InputSpec("Numbers")}
    OUTPUTS = {"report": OutputSpec("Report", publish_as="report")}


class SumExecutor(BaseExecutor):
    def Do(self, input_dict, output_dict, exec_properties):
        _count(self.context)
        _maybe_fail(self.context)
        total = sum(sum(_read(a)) for a in input_dict["numbers"])
        path = output_dict["report"][0].path("total.txt")
        with open(path, "w") as f:
            f.write(str(total))
        self.context.register_result("total", path)


class Sum(Component):
    SPEC_CLASS, EXECUTOR_CLASS = SumSpec, SumExecutor


class SearchSpec(ComponentSpec):
    INPUTS = {"numbers": InputSpec("Numbers")}
    OUTPUTS = {"best": OutputSpec("Numbers")}
    PARAMETERS = {"steps": Parameter(int, default=5)}


class SearchExecutor(BaseExecutor):
    """A long job that checkpoints each step in its resume directory."""

    def Do(self, input_dict, output_dict, exec_properties):
        state_path = os.path.join(self.context.resume_dir, "state.json")
        with open(os.path.join(os.environ["TOY_COUNTER_DIR"], "search_dirs"), "a") as f:
            f.write(self.context.resume_dir + "\n")
        done = json.load(open(state_path))["done"] if os.path.exists(state_path) else 0
        total = exec_properties["steps"]
        for step in range(done + 1, total + 1):
            _count(self.context)                      # one line per step actually computed
            if os.environ.get("TOY_FAIL_AT_STEP") == str(step):
                raise RuntimeError(f"stopped at step {step}")
            if os.environ.get("TOY_WAIT_AT_STEP") == str(step):  # for a signal from the test
                open(os.environ["TOY_WAIT_MARKER"], "w").close()
                time.sleep(120)
            with open(state_path, "w") as f:
                json.dump({"done": step}, f)
            self.context.progress(f"step {step}", done=step, total=total)
        _write(output_dict["best"][0], [float(total)])


class Search(Component):
    SPEC_CLASS, EXECUTOR_CLASS = SearchSpec, SearchExecutor


def build(root, factor: float = 2.0, enable_cache: bool = True) -> Pipeline:
    """source -> scale (factor) and scale_b (add 10) -> sum (fan-in of both)."""
    source = Source()
    scale = Scale(numbers=source.outputs["numbers"], factor=factor)
    scale_b = Scale(component_id="scale_b", numbers=source.outputs["numbers"], mode="add",
                    factor=10)
    total = Sum(numbers=[scale.outputs["scaled"], scale_b.outputs["scaled"]])
    return Pipeline("toy", [total, scale_b, scale, source], root, enable_cache=enable_cache)


def search_pipeline(root) -> Pipeline:
    """source -> search (5 steps, each checkpointed in its resume directory)."""
    source = Source()
    return Pipeline("search", [source, Search(numbers=source.outputs["numbers"], steps=5)], str(root))


@pytest.fixture
def env(tmp_path, monkeypatch):
    counters = tmp_path / "counters"
    counters.mkdir()
    monkeypatch.setenv("TOY_COUNTER_DIR", str(counters))
    for name in ("TOY_FAIL", "TOY_INTERRUPT", "TOY_KILL", "TOY_FAIL_AT_STEP"):
        monkeypatch.delenv(name, raising=False)

    def calls(cid: str) -> int:
        path = counters / cid
        return len(path.read_text().splitlines()) if path.exists() else 0

    return tmp_path / "root", calls


def states(result) -> dict[str, str]:
    return {cid: r.state for cid, r in result.components.items()}


def total_of(result) -> float:
    return float(open(result.results["total"]).read())


# ---- running, caching ----------------------------------------------------------------------

def test_runs_in_topological_order_and_publishes_outputs(env):
    root, calls = env
    pipeline = build(root)
    assert [c.id for c in pipeline.components] == ["source", "scale_b", "scale", "sum"]
    events = []
    result = LocalRunner(on_progress=events.append).run(pipeline)
    assert list(result.components) == ["source", "scale_b", "scale", "sum"]
    assert set(states(result).values()) == {"COMPLETE"}
    assert total_of(result) == (2 + 4 + 6) + (11 + 12 + 13)
    scaled = result.output("scale", "scaled")
    assert scaled.uri == os.path.join(str(root), "scale", "scaled",
                                      str(result.components["scale"].execution_id))
    assert scaled.properties == {"count": 3} and scaled.id is not None
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp") or p.name == ".resume"]
    assert [calls(c) for c in ("source", "scale", "scale_b", "sum")] == [1, 1, 1, 1]
    messages = [str(e) for e in events]
    assert messages[0].startswith("[source] started") and "[sum] complete in" in messages[-1]


def test_second_run_is_fully_cached(env):
    root, calls = env
    first = LocalRunner().run(build(root))
    second = LocalRunner().run(build(root))
    assert set(states(second).values()) == {"CACHED"}
    assert [calls(c) for c in ("source", "scale", "scale_b", "sum")] == [1, 1, 1, 1]
    assert second.output("sum", "report").uri == first.output("sum", "report").uri
    assert second.results == first.results          # results survive caching
    with MetadataStore(second.metadata_path) as store:
        execs = store.executions(second.run_id)
        assert [e.state for e in execs] == ["CACHED"] * 4
        assert [e.cached_from for e in execs] == [
            first.components[e.component_id].execution_id for e in execs]


def test_parameter_change_reruns_component_and_downstream_only(env):
    root, calls = env
    LocalRunner().run(build(root, factor=2.0))
    result = LocalRunner().run(build(root, factor=3))
    assert states(result) == {"source": "CACHED", "scale_b": "CACHED", "scale": "COMPLETE",
                              "sum": "COMPLETE"}
    assert total_of(result) == (3 + 6 + 9) + (11 + 12 + 13)
    assert [calls(c) for c in ("source", "scale", "scale_b", "sum")] == [1, 2, 1, 2]
    # Back to the first parameters: everything is in the cache again.
    again = LocalRunner().run(build(root, factor=2.0))
    assert set(states(again).values()) == {"CACHED"}


def test_executor_version_change_invalidates_cache(env, monkeypatch):
    root, calls = env
    LocalRunner().run(build(root))
    monkeypatch.setattr(ScaleExecutor, "VERSION", "2")
    result = LocalRunner().run(build(root))
    assert states(result) == {"source": "CACHED", "scale_b": "COMPLETE", "scale": "COMPLETE",
                              "sum": "COMPLETE"}


def test_cache_disabled_or_outputs_deleted_reexecutes(env):
    root, calls = env
    first = LocalRunner().run(build(root))
    assert set(states(LocalRunner().run(build(root, enable_cache=False))).values()) == {
        "COMPLETE"}
    shutil.rmtree(first.output("source", "numbers").uri)
    result = LocalRunner().run(build(root))          # newest COMPLETE outputs still exist
    assert set(states(result).values()) == {"CACHED"}
    assert calls("source") == 2


# ---- failures, interruption, resume ----------------------------------------------------------

def test_failure_marks_run_failed_and_rerun_runs_only_unfinished(env, monkeypatch):
    root, calls = env
    monkeypatch.setenv("TOY_FAIL", "sum")
    with pytest.raises(PipelineError, match=r"component 'sum' failed: RuntimeError: boom in sum"
                       ) as info:
        LocalRunner().run(build(root))
    assert info.value.component_id == "sum" and isinstance(info.value.__cause__, RuntimeError)
    doc = json.load(open(root / "run.json"))
    assert doc["status"] == "failed" and "boom in sum" in doc["error"]
    assert doc["components"]["sum"]["state"] == "failed"
    assert doc["components"]["scale"]["state"] == "complete"
    assert not list(root.glob("sum/report/*"))       # nothing half-written is published
    with MetadataStore(str(root / "metadata.sqlite")) as store:
        run = store.list_runs()[0]
        assert run.status == "FAILED"
        assert [e.state for e in store.executions(run.run_id)][-1] == "FAILED"

    monkeypatch.delenv("TOY_FAIL")
    result = LocalRunner().run(build(root))
    assert states(result) == {"source": "CACHED", "scale_b": "CACHED", "scale": "CACHED",
                              "sum": "COMPLETE"}
    assert [calls(c) for c in ("source", "scale", "scale_b", "sum")] == [1, 1, 1, 2]


def test_keyboard_interrupt_is_recorded_and_propagates(env, monkeypatch):
    root, calls = env
    monkeypatch.setenv("TOY_INTERRUPT", "scale")
    with pytest.raises(KeyboardInterrupt):
        LocalRunner().run(build(root))
    doc = json.load(open(root / "run.json"))
    assert doc["status"] == "interrupted" and doc["error"] == "component 'scale' was stopped by Ctrl-C"
    assert doc["components"]["scale"]["state"] == "interrupted"
    assert doc["components"]["scale"]["error"] == "stopped by Ctrl-C"
    with MetadataStore(str(root / "metadata.sqlite")) as store:
        run = store.get_run(doc["run_id"])
        assert run.status == "INTERRUPTED" and run.error == "component 'scale' was stopped by Ctrl-C"
        stopped = store.executions(run.run_id)[-1]
        assert (stopped.component_id, stopped.state, stopped.error) == ("scale", "INTERRUPTED", "stopped by Ctrl-C")
    events = []
    with pytest.raises(KeyboardInterrupt):
        LocalRunner(on_progress=events.append).run(build(root))
    assert any(str(e).startswith("[scale] stopped by Ctrl-C after") for e in events)
    assert not any("FAILED" in str(e) for e in events)
    monkeypatch.delenv("TOY_INTERRUPT")
    result = LocalRunner().run(build(root))
    assert states(result) == {"source": "CACHED", "scale_b": "CACHED", "scale": "COMPLETE",
                              "sum": "COMPLETE"}


def test_ctrl_c_wrapped_by_tensorflow_is_recorded_as_an_interruption(env, monkeypatch):
    root, calls = env
    monkeypatch.setenv("TOY_WRAPPED_INTERRUPT", "scale")
    with pytest.raises(KeyboardInterrupt, match="component 'scale' was stopped"):
        LocalRunner().run(build(root))
    assert json.load(open(root / "run.json"))["status"] == "interrupted"
    with MetadataStore(str(root / "metadata.sqlite")) as store:
        assert [run.status for run in store.list_runs()] == ["INTERRUPTED"]


def test_killed_process_leaves_running_execution_treated_as_unfinished(env):
    root, calls = env
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    script = textwrap.dedent(f"""
        import importlib, sys
        sys.path[:0] = [{tests_dir!r}, {os.path.dirname(tests_dir)!r}]
        toy = importlib.import_module({__name__!r})
        from pipeline.local_runner import LocalRunner
        LocalRunner().run(toy.build({str(root)!r}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "TOY_KILL": "scale"},
                          cwd=os.path.dirname(tests_dir), capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    doc = json.load(open(root / "run.json"))
    assert doc["status"] == "running" and doc["components"]["scale"]["state"] == "running"
    killed_id = doc["components"]["scale"]["execution_id"]
    assert (root / "scale" / "scaled" / f".{killed_id}.tmp").is_dir()
    last_alive = os.path.getmtime(root / "run.json")
    time.sleep(1.0)

    result = LocalRunner().run(build(root))
    assert states(result) == {"source": "CACHED", "scale_b": "CACHED", "scale": "COMPLETE",
                              "sum": "COMPLETE"}
    assert not (root / "scale" / "scaled" / f".{killed_id}.tmp").exists()
    with MetadataStore(result.metadata_path) as store:
        killed = store.get_execution(killed_id)
        assert killed.state == "INTERRUPTED" and "interrupted" in killed.error
        run = store.get_run(doc["run_id"])
        assert run.status == "INTERRUPTED"
        # Its end is when the killed process was last alive (run.json's time), not when the
        # next run noticed: `actsearch runs` then shows how long it really ran.
        assert run.end_time == pytest.approx(last_alive, abs=0.5) and killed.end_time == pytest.approx(last_alive, abs=0.5)


def test_sigterm_is_recorded_as_an_interruption_and_the_next_run_resumes(env, tmp_path):
    """SIGTERM (docker stop, an eviction, a job's time limit) stops a run as Ctrl-C does once
    `remember_ctrl_c` is installed: the run and the step are INTERRUPTED, not left RUNNING,
    and the next run continues the step from its resume state."""
    root, calls = env
    marker = tmp_path / "waiting"
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    script = textwrap.dedent(f"""
        import importlib, sys
        sys.path[:0] = [{tests_dir!r}, {os.path.dirname(tests_dir)!r}]
        toy = importlib.import_module({__name__!r})
        from components.base import remember_ctrl_c
        from pipeline.local_runner import LocalRunner
        remember_ctrl_c()
        try:
            LocalRunner(on_progress=print).run(toy.search_pipeline({str(root)!r}))
        except KeyboardInterrupt as stop:
            print("stopped:", type(stop).__name__, stop)
            sys.exit(143)
    """)
    code, out, err = run_and_signal([sys.executable, "-c", script], marker, signal.SIGTERM,
                                    env={**os.environ, "TOY_WAIT_AT_STEP": "3", "TOY_WAIT_MARKER": str(marker)},
                                    cwd=os.path.dirname(tests_dir))
    assert code == 143, (out, err)
    assert "[search] stopped by SIGTERM after" in out and "stopped: Terminated terminated (SIGTERM)" in out
    assert "Traceback" not in err
    doc = json.load(open(root / "run.json"))
    assert doc["status"] == "interrupted" and doc["end_time"] is not None
    assert doc["error"] == "component 'search' was stopped by SIGTERM"
    assert doc["components"]["search"]["state"] == "interrupted"
    with MetadataStore(str(root / "metadata.sqlite")) as store:
        assert store.get_run(doc["run_id"]).status == "INTERRUPTED"
        stopped = store.get_execution(doc["components"]["search"]["execution_id"])
        assert (stopped.state, stopped.error) == ("INTERRUPTED", "stopped by SIGTERM")
    assert calls("search") == 3                       # steps 1-2 checkpointed, 3 was under way

    result = LocalRunner().run(search_pipeline(root))
    assert states(result) == {"source": "CACHED", "search": "COMPLETE"}
    assert calls("search") == 3 + 3                   # resumed: steps 3 to 5 only


def test_resume_dir_lets_long_work_continue_after_failure(env, monkeypatch):
    root, calls = env
    source = Source()
    search = Search(numbers=source.outputs["numbers"], steps=5)
    pipeline = Pipeline("search", [source, search], root)
    monkeypatch.setenv("TOY_FAIL_AT_STEP", "4")
    with pytest.raises(PipelineError, match="stopped at step 4"):
        LocalRunner().run(pipeline)
    assert calls("search") == 4                       # steps 1-3 done, 4 failed
    monkeypatch.delenv("TOY_FAIL_AT_STEP")
    events = []
    result = LocalRunner(on_progress=events.append).run(pipeline)
    assert calls("search") == 4 + 2                   # resumed: only steps 4 and 5 computed
    assert _read(result.output("search", "best")) == [5.0]
    dirs = open(os.path.join(os.environ["TOY_COUNTER_DIR"], "search_dirs")).read().split()
    assert len(dirs) == 2 and dirs[0] == dirs[1]      # same resume dir for the same cache key
    assert not os.path.exists(dirs[0])                # removed after success
    steps = [e for e in events if e.component_id == "search" and e.total]
    assert [(e.done, e.total) for e in steps] == [(4, 5), (5, 5)]
    assert steps[0].eta_s is not None and "(4/5" in str(steps[0])


class ExtendableSearchSpec(SearchSpec):
    PARAMETERS = {"steps": Parameter(int, default=5, in_resume_key=False)}


class ExtendableSearch(Component):
    SPEC_CLASS, EXECUTOR_CLASS = ExtendableSearchSpec, SearchExecutor


def test_an_unfinished_step_continues_under_a_new_budget_but_a_finished_one_is_not_reused(env, monkeypatch):
    """A search's budget (`in_resume_key=False`): raising it after a crash keeps the steps done."""
    root, calls = env

    def pipeline(steps):
        source = Source()
        return Pipeline("search", [source, ExtendableSearch(component_id="search", numbers=source.outputs["numbers"],
                                                            steps=steps)], root)

    monkeypatch.setenv("TOY_FAIL_AT_STEP", "4")
    with pytest.raises(PipelineError, match="stopped at step 4"):
        LocalRunner().run(pipeline(5))
    monkeypatch.delenv("TOY_FAIL_AT_STEP")
    result = LocalRunner().run(pipeline(7))
    assert calls("search") == 4 + 4                   # steps 4 to 7: the three done were kept
    assert _read(result.output("search", "best")) == [7.0]
    assert states(LocalRunner().run(pipeline(7)))["search"] == "CACHED"
    result = LocalRunner().run(pipeline(8))           # a finished search is not stretched: a new one
    assert states(result)["search"] == "COMPLETE" and calls("search") == 8 + 8
    assert _read(result.output("search", "best")) == [8.0]


def test_a_lost_metadata_store_does_not_clobber_the_outputs_on_disk(env):
    """A deleted or truncated metadata.sqlite numbers executions from 1 again: its first rerun
    used to fail renaming onto the earlier `<component>/<output>/1`."""
    root, calls = env
    first = LocalRunner().run(build(root))
    published = first.output("scale", "scaled").uri
    (root / "metadata.sqlite").write_bytes(b"")
    second = LocalRunner().run(build(root))
    assert set(states(second).values()) == {"COMPLETE"} and total_of(second) == total_of(first)
    again = second.output("scale", "scaled").uri
    assert again != published and os.path.basename(again) == f"{os.path.basename(published)}-{second.run_id}"
    assert _read(first.output("scale", "scaled")) == _read(second.output("scale", "scaled"))  # both kept

    # Lost again, and this time the rerun is killed mid-step: cleaning up after it removes its own
    # directories, not the earlier store's execution of the same number.
    (root / "metadata.sqlite").write_bytes(b"")
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    script = textwrap.dedent(f"""
        import importlib, sys
        sys.path[:0] = [{tests_dir!r}, {os.path.dirname(tests_dir)!r}]
        toy = importlib.import_module({__name__!r})
        from pipeline.local_runner import LocalRunner
        LocalRunner().run(toy.build({str(root)!r}))
    """)
    time.sleep(1.1)  # the killed execution starts after the earlier outputs were last changed
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "TOY_KILL": "scale"},
                          cwd=os.path.dirname(tests_dir), capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    third = LocalRunner().run(build(root))
    assert os.path.isdir(published) and _read(first.output("scale", "scaled")) == _read(third.output("scale", "scaled"))


def test_the_eta_of_a_resumed_step_follows_this_attempts_pace(monkeypatch):
    import components.base as base

    clock = iter([100.0, 100.5, 110.5, 130.5])  # start, then each progress call
    monkeypatch.setattr(base.time, "monotonic", lambda: next(clock))
    events = []
    context = base.ExecutorContext(component_id="step", on_progress=events.append)
    context.progress("5 done before", done=5, total=8, already_done=True)
    context.progress("one more", done=6, total=8)    # 10 s for one unit: 2 left -> 20 s
    context.progress("another", done=7, total=8)     # 30 s for two units: 1 left -> 15 s
    assert [e.eta_s for e in events] == [None, pytest.approx(20.0 * 10.5 / 10), pytest.approx(15.0 * 30.5 / 30)]


def test_an_unfinished_attempt_that_cannot_be_continued_is_named(env, monkeypatch):
    """Other settings give the step another cache key, hence another resume folder: the runner
    says so instead of starting over in silence."""
    root, calls = env
    source = Source()
    monkeypatch.setenv("TOY_FAIL_AT_STEP", "4")
    with pytest.raises(PipelineError, match="stopped at step 4"):
        LocalRunner().run(Pipeline("search", [source, Search(numbers=source.outputs["numbers"], steps=5)], root))
    monkeypatch.delenv("TOY_FAIL_AT_STEP")
    events = []
    changed = Search(numbers=source.outputs["numbers"], steps=6)
    LocalRunner(on_progress=events.append).run(Pipeline("search", [source, changed], root))
    notes = [str(e) for e in events if e.component_id == "search" and "note:" in str(e)]
    assert len(notes) == 1 and "had other settings or code, so it cannot be continued" in notes[0]
    assert calls("search") == 4 + 6  # started afresh
    events.clear()
    LocalRunner(on_progress=events.append).run(Pipeline("search", [source, changed], root))
    assert not [e for e in events if "note:" in str(e)]  # cached: nothing to say


# ---- run.json and metadata -------------------------------------------------------------------

def test_run_json_contents(env):
    root, _ = env
    result = LocalRunner().run(build(root), run_id="first-run")
    doc = json.load(open(root / "run.json"))
    assert doc["run_id"] == "first-run" and doc["status"] == "complete"
    assert doc["pipeline"] == "toy" and doc["error"] is None and doc["end_time"]
    assert {cid: c["state"] for cid, c in doc["components"].items()} == {
        "source": "complete", "scale_b": "complete", "scale": "complete", "sum": "complete"}
    report = result.output("sum", "report").uri
    assert doc["results"] == {"report": report, "total": os.path.join(report, "total.txt")}
    assert os.path.isfile(doc["results"]["total"])   # registered in staging, points to final
    assert doc["components"]["sum"]["outputs"] == {"report": [report]}
    with pytest.raises(PipelineError, match="already exists"):
        LocalRunner().run(build(root), run_id="first-run")


def test_lineage_and_queries(env):
    root, _ = env
    first = LocalRunner().run(build(root), run_id="r1")
    LocalRunner().run(build(root, factor=5), run_id="r2")
    with MetadataStore(first.metadata_path) as store:
        assert [r.run_id for r in store.list_runs()] == ["r2", "r1"]
        assert [e.component_id for e in store.executions("r2")] == [
            "source", "scale_b", "scale", "sum"]
        report = first.output("sum", "report")
        tree = store.lineage(report.id)
        assert tree["execution"]["component_id"] == "sum"
        assert tree["execution"]["run_id"] == "r1"
        parents = tree["inputs"]["numbers"]
        assert [p["execution"]["component_id"] for p in parents] == ["scale", "scale_b"]
        assert parents[0]["execution"]["exec_properties"]["factor"] == 2.0
        grand = parents[0]["inputs"]["numbers"][0]
        assert grand["execution"]["component_id"] == "source" and grand["inputs"] == {}
        # The source artifact was reused (CACHED) in r2, but its producer is still r1's run.
        source_art = first.output("source", "numbers")
        assert store.producer_of(source_art.id).run_id == "r1"
        with pytest.raises(KeyError):
            store.lineage(10_000)


def test_lock_prevents_concurrent_runs_and_unwritable_root(env, tmp_path):
    root, _ = env
    root.mkdir()
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(PipelineError, match="another run"):
            LocalRunner().run(build(root))
    (tmp_path / "afile").write_text("")
    with pytest.raises(PipelineError, match="cannot create pipeline_root"):
        LocalRunner().run(build(tmp_path / "afile" / "root"))


# ---- definitions and validation ----------------------------------------------------------------

def test_dag_validation_errors(tmp_path):
    source = Source()
    scale = Scale(numbers=source.outputs["numbers"])
    with pytest.raises(PipelineDefinitionError, match="duplicate component id 'source'"):
        Pipeline("p", [source, Source(), scale], tmp_path)
    with pytest.raises(PipelineDefinitionError, match="producer 'source' is not in the pipeline"):
        Pipeline("p", [scale], tmp_path)
    other = Scale(component_id="other", numbers=scale.outputs["scaled"])
    scale.inputs["numbers"] = [other.outputs["scaled"]]
    with pytest.raises(PipelineDefinitionError,
                       match="cycle: 'other' reads from 'scale' reads from 'other'"):
        Pipeline("p", [source, scale, other], tmp_path)
    with pytest.raises(PipelineDefinitionError, match="no components"):
        Pipeline("p", [], tmp_path)
    with pytest.raises(PipelineDefinitionError, match="pipeline name"):
        Pipeline("bad name", [source], tmp_path)


def test_wiring_errors():
    source = Source()
    with pytest.raises(ComponentDefinitionError, match="has no output 'nope'; outputs: .'numbers'"):
        source.outputs["nope"]
    with pytest.raises(ComponentDefinitionError, match="required input 'numbers'"):
        Scale()
    with pytest.raises(ComponentDefinitionError, match="unknown argument.*'data'"):
        Scale(data=source.outputs["numbers"])
    with pytest.raises(ComponentDefinitionError, match="must be wired to an upstream output"):
        Scale(numbers="numbers.json")
    report = Sum(numbers=source.outputs["numbers"]).outputs["report"]
    with pytest.raises(ComponentDefinitionError, match="expects Numbers.*is Report"):
        Scale(numbers=report)
    with pytest.raises(ComponentDefinitionError, match="component id"):
        Source(component_id="has space")


def test_parameter_validation_errors():
    source = Source()
    ch = source.outputs["numbers"]
    assert Scale(numbers=ch, factor=3).exec_properties == {"factor": 3.0, "mode": "mul"}
    with pytest.raises(ParameterError, match="unknown argument"):
        Source(size=3)
    with pytest.raises(ParameterError, match="'n' must be of type int, got str"):
        Source(n="3")
    with pytest.raises(ParameterError, match="'n' must be of type int, got bool"):
        Source(n=True)
    with pytest.raises(ParameterError, match=r"'mode' must be one of \['mul', 'add'\]"):
        Scale(numbers=ch, mode="pow")

    class Spec(ComponentSpec):
        PARAMETERS = {"config": Parameter(dict), "seed": Parameter(int, default=None)}

    assert Spec.validate_parameters({"config": {"a": [1]}}) == {"config": {"a": [1]},
                                                                "seed": None}
    with pytest.raises(ParameterError, match="required parameter 'config'"):
        Spec.validate_parameters({})
    with pytest.raises(ParameterError, match="JSON-serialisable"):
        Spec.validate_parameters({"config": {"f": object()}})
    with pytest.raises(ParameterError, match="'seed' must be of type int"):
        Spec.validate_parameters({"config": {}, "seed": 1.5})


def test_spec_definition_errors():
    with pytest.raises(ComponentDefinitionError, match="unknown artifact type 'Nope'"):
        class BadType(ComponentSpec):
            OUTPUTS = {"x": OutputSpec("Nope")}
    with pytest.raises(ParameterError, match="must be of type int"):
        class BadDefault(ComponentSpec):
            PARAMETERS = {"n": Parameter(int, default="3")}
    with pytest.raises(ComponentDefinitionError, match="declared twice"):
        class Twice(ComponentSpec):
            INPUTS = {"x": InputSpec("Numbers")}
            OUTPUTS = {"x": OutputSpec("Numbers")}
    with pytest.raises(ComponentDefinitionError, match="parameter 't' has type"):
        class BadParamType(ComponentSpec):
            PARAMETERS = {"t": Parameter(tuple)}


def test_artifact_json_roundtrip_and_executor_without_orchestrator(tmp_path, monkeypatch):
    assert "TensorBoardLogs" in ARTIFACT_TYPES and "Numbers" in ARTIFACT_TYPES
    a = Artifact("Numbers", str(tmp_path), {"count": 2}, id=4, fingerprint="f")
    assert Artifact.from_json(a.to_json()) == a
    # An executor runs by hand, as a Kubeflow wrapper would run it: only URIs and properties.
    monkeypatch.setenv("TOY_COUNTER_DIR", str(tmp_path))
    out = Artifact("Numbers", str(tmp_path / "out"))
    os.makedirs(out.uri)
    executor = SearchExecutor(ExecutorContext(component_id="search"))
    executor.Do({}, {"best": [out]}, {"steps": 2})
    assert _read(out) == [2.0] and os.path.isdir(executor.context.resume_dir)
    assert ScaleExecutor.code_version() == "version:1"
    assert SourceExecutor.code_version().startswith("source:")


def test_root_in_use_follows_the_run_lock(tmp_path):
    from pipeline.local_runner import _exclusive, root_in_use

    root = str(tmp_path)
    assert not root_in_use(root)  # no lock file yet
    with _exclusive(root):
        assert root_in_use(root)
    assert not root_in_use(root)  # released: a RUNNING record here was stopped


def test_a_dead_run_ends_when_its_own_record_last_moved_and_another_when_it_is_noticed(tmp_path):
    """run.json belongs to one run (the kfp-local runner does not touch it while it runs): its
    time says nothing about another run the same store left RUNNING."""
    with MetadataStore(str(tmp_path / "metadata.sqlite")) as store:
        store.create_run("a", "toy", str(tmp_path))
        store.create_run("b", "toy", str(tmp_path))
        alive = store.get_run("b").start_time  # after a's start, before now
        time.sleep(0.05)
        before = time.time()
        store.mark_interrupted("died", last_alive={"a": alive, "other": alive})
        assert store.get_run("a").end_time == pytest.approx(alive, abs=1e-6)
        assert store.get_run("b").end_time >= before
