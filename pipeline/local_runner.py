"""Runs a pipeline in-process, with an artifact store, a metadata store, caching and resume.

Layout under `pipeline_root`::

    metadata.sqlite                                  runs, executions, artifacts, lineage
    run.json                                         the latest run: status, components, results
    <component_id>/<output_name>/<execution_id>/     published output artifacts
    <component_id>/<output_name>/.<execution_id>.tmp outputs being written (renamed on success)
    <component_id>/.resume/<cache_key[:16]>/         resume directory (kept until success)

A component is skipped (recorded CACHED) when a COMPLETE execution with the same cache key
exists and its outputs are still on disk. The cache key hashes the component's identity, the
executor's code version, the parameters and the fingerprints of its input artifacts (each
output's fingerprint derives from its producer's cache key), so a change invalidates that
component and everything downstream, nothing upstream. Outputs become visible only after the
executor returned: a run stopped at any point re-runs just the unfinished components.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import fcntl
import glob
import hashlib
import json
import os
import re
import secrets
import shutil
import sqlite3
import time
from typing import Any, Callable, Iterator, Mapping

from absl import logging

from components.base import (Artifact, BaseExecutor, Component, ComponentSpec,
                             ExecutorContext, ProgressEvent, Terminated, executor_path,
                             interrupted_by_user, stop_if_interrupted, stopped_by)
from pipeline import metadata as md
from pipeline.dag import Pipeline

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def run_id_problem(run_id: str) -> str | None:
    """Why `run_id` cannot name a run (it becomes a directory name under the root), or None.
    Shared with the CLI, which checks a --run_id before any work starts."""
    if _RUN_ID.match(run_id):
        return None
    return f"run id {run_id!r} may contain only letters, digits, '_', '-', '.' and must start with a letter or digit"


class PipelineError(RuntimeError):
    """A run could not start or a component failed; names the component when there is one."""

    def __init__(self, message: str, component_id: str | None = None,
                 run_id: str | None = None) -> None:
        super().__init__(message)
        self.component_id = component_id
        self.run_id = run_id


@dataclasses.dataclass
class ComponentResult:
    component_id: str
    state: str                       # COMPLETE, CACHED, FAILED or INTERRUPTED
    execution_id: int
    duration_s: float
    outputs: dict[str, list[Artifact]]
    error: str | None = None


@dataclasses.dataclass
class RunResult:
    run_id: str
    status: str                      # COMPLETE (a failed run raises PipelineError)
    pipeline_root: str
    run_json: str
    metadata_path: str
    components: dict[str, ComponentResult]
    results: dict[str, str]

    def output(self, component_id: str, name: str) -> Artifact:
        """The (single) artifact of one output of one component."""
        return self.components[component_id].outputs[name][0]


def compute_cache_key(component: Component, input_dict: dict[str, list[Artifact]], *,
                      for_resume: bool = False) -> str:
    """Hash of component identity, executor code version, parameters and input fingerprints
    (`for_resume`: without the parameters an unfinished execution may continue under)."""
    return cache_key(component.id, component.type_name, component.SPEC_CLASS,
                     component.EXECUTOR_CLASS, component.exec_properties, input_dict, for_resume=for_resume)


def cache_key(component_id: str, component_type: str, spec: type[ComponentSpec],
              executor: type[BaseExecutor], exec_properties: Mapping[str, Any],
              input_dict: Mapping[str, list[Artifact]], *, for_resume: bool = False) -> str:
    """`compute_cache_key` from its parts, for a Kubeflow step, which has no `Component` but
    must name its resume directory exactly as this runner does."""
    def counts(parameter) -> bool:
        return parameter.in_cache_key and (parameter.in_resume_key or not for_resume)

    payload = {
        "component_id": component_id,
        "component_type": component_type,
        "spec": f"{spec.__module__}.{spec.__qualname__}",
        "executor": executor_path(executor),
        "executor_version": executor.code_version(),
        "exec_properties": {name: value for name, value in exec_properties.items()
                            if counts(spec.PARAMETERS[name])},
        "external": executor.external_fingerprint(exec_properties),
        "inputs": {name: [a.fingerprint for a in arts] for name, arts in input_dict.items()},
    }
    return _sha256(json.dumps(payload, sort_keys=True))


def output_fingerprint(key: str, output_name: str) -> str:
    """An output's fingerprint derives from its producer's cache key, so a consumer's key
    changes exactly when something upstream changed."""
    return _sha256(f"{key}:{output_name}")


def resume_dir_for(root: str, component_id: str, key: str) -> str:
    """Where an execution with resume key `key` (`cache_key(..., for_resume=True)`) keeps its
    resume state under `root`: the same settings find the same directory again, changed settings
    a fresh one (except the parameters marked `in_resume_key=False`)."""
    return os.path.join(root, component_id, ".resume", key[:16])


def unusable_attempt_note(resume_dir: str) -> str | None:
    """The note for an unfinished earlier attempt of a step that cannot be continued (its
    settings or the code it hashes changed, so its cache key and folder differ), naming the
    newest such folder; None when this attempt continues its own work or there is none. Both
    runners print it: without it a re-run would start over without a word. The stale folder is
    left where it is: it is the only copy of that work, and going back to the earlier settings
    continues it."""
    if os.path.isdir(resume_dir) and os.listdir(resume_dir):
        return None
    stale = _unfinished_siblings(resume_dir)
    if not stale:
        return None
    more = f" and {len(stale) - 1} more beside it" if len(stale) > 1 else ""
    return (f"note: an unfinished earlier attempt of this step ({stale[-1]}{more}) had other "
            f"settings or code, so it cannot be continued: the step starts afresh (delete that "
            f"folder to free its space, or go back to the earlier settings to continue it)")


def _unfinished_siblings(resume_dir: str) -> list[str]:
    """Other non-empty resume folders of the same step (other keys), oldest first: a finished
    attempt removes its folder, so each is work an attempt left unfinished."""
    parent = os.path.dirname(resume_dir)
    if not os.path.isdir(parent):
        return []
    found = []
    for name in os.listdir(parent):
        path = os.path.join(parent, name)
        if path != resume_dir and os.path.isdir(path) and os.listdir(path):
            found.append(path)
    return sorted(found, key=lambda p: (os.path.getmtime(p), p))


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.datetime.fromtimestamp(t).astimezone().isoformat(
        timespec="seconds")


class LocalRunner:
    """Executes a `Pipeline` in this process, in topological order.

    `metadata_path` defaults to `<pipeline_root>/metadata.sqlite`. `on_progress` receives every
    progress event (component start/end lines and executors' reports); by default they are
    logged with absl. `on_complete` runs after a successful run while the pipeline root is
    still locked (the CLI publishes the deliverables there).
    """

    def __init__(self, metadata_path: str | None = None,
                 on_progress: Callable[[ProgressEvent], None] | None = None,
                 on_complete: Callable[["RunResult"], None] | None = None) -> None:
        self.metadata_path = metadata_path
        self.on_progress = on_progress
        self.on_complete = on_complete

    def run(self, pipeline: Pipeline, run_id: str | None = None) -> RunResult:
        root = pipeline.pipeline_root
        _check_writable(root)
        run_id = run_id or time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)
        problem = run_id_problem(run_id)
        if problem:
            raise PipelineError(problem, run_id=run_id)
        with locked_store(root, self.metadata_path) as store:
            try:
                with _store_errors(store.path):
                    store.create_run(run_id, pipeline.name, root)
            except ValueError as e:
                raise PipelineError(str(e), run_id=run_id) from None
            result = _Run(pipeline, store, run_id, self._emit).execute()
            if self.on_complete is not None:  # still holding the root: no other run can interleave
                self.on_complete(result)
            return result

    def _emit(self, event: ProgressEvent) -> None:
        if self.on_progress is not None:
            self.on_progress(event)
        else:
            logging.info("%s", event)


class _Run:
    """The state of one run: artifacts produced so far and the run.json document."""

    def __init__(self, pipeline: Pipeline, store: md.MetadataStore, run_id: str,
                 emit: Callable[[ProgressEvent], None]) -> None:
        self.pipeline, self.store, self.run_id = pipeline, store, run_id
        self.root = pipeline.pipeline_root
        self.run_json = os.path.join(self.root, "run.json")
        self.emit = _with_heartbeat(emit, self.run_json)
        self.produced: dict[tuple[str, str], list[Artifact]] = {}
        self.components: dict[str, ComponentResult] = {}
        self.results: dict[str, str] = {}
        self.unwritten: dict[str, str] = {}  # file -> why a bookkeeping write to it failed
        self.doc: dict[str, Any] = {
            "run_id": run_id, "pipeline": pipeline.name, "pipeline_root": self.root,
            "metadata": store.path, "status": "running", "start_time": _iso(time.time()),
            "end_time": None, "error": None,
            "components": {c.id: {"state": "pending"} for c in pipeline.components},
            "results": self.results,
        }

    def execute(self) -> RunResult:
        current = None
        try:
            self._write_run_json()
            for component in self.pipeline.components:
                current = component.id
                self._run_component(component)
        except BaseException as e:
            instead = self._record_stop(e, current)
            if instead is None:
                raise
            raise instead from e
        problems = self._record_end(md.COMPLETE, None)
        if problems:
            raise PipelineError(f"every component completed, but {_joined(problems)}; run again "
                                f"to record the run (run {self.run_id})", run_id=self.run_id)
        return RunResult(self.run_id, md.COMPLETE, self.root, self.run_json, self.store.path,
                         self.components, dict(self.results))

    def _record_stop(self, e: BaseException, current: str | None) -> BaseException | None:
        """Records why the run stopped and returns the exception to raise from `e` (None: `e`
        itself). A failure becomes a `PipelineError` naming the component; Ctrl-C or SIGTERM
        that TensorFlow wrapped becomes what it was. Writes that fail here (a full disk fails
        them too) are named after the cause, never raised instead of it."""
        by_user = interrupted_by_user(e)               # Ctrl-C or SIGTERM, maybe wrapped
        interrupted = by_user or not isinstance(e, Exception)
        message = _stop_message(e, current, by_user)
        problems = self._record_end(md.INTERRUPTED if interrupted else md.FAILED, message)
        if interrupted:
            for problem in problems:
                logging.warning("%s: %s", message, problem)
            if not isinstance(e, Exception):
                return None
            stop = Terminated if stopped_by(e) == "SIGTERM" else KeyboardInterrupt
            return stop(f"component {current!r} was stopped")
        return PipelineError(f"{message} ({self._where(problems)})", component_id=current,
                             run_id=self.run_id)

    def _record_end(self, status: str, error: str | None) -> list[str]:
        """Records the run's end in the store and run.json, each write guarded; returns what
        could not be written during the whole run's bookkeeping (empty when all was)."""
        self._attempt(self.store.path,
                      lambda: self.store.finish_run(self.run_id, status, error, self.results))
        self.doc.update(status=status.lower(), error=error, end_time=_iso(time.time()))
        self._attempt(self.run_json, self._write_run_json)
        return [f"{path} could not be written ({why})" for path, why in self.unwritten.items()]

    def _where(self, problems: list[str]) -> str:
        """Where the failure is recorded, or, when a record could not be written, that it
        could not (a stale RUNNING record would otherwise pass for an interrupted run)."""
        if not problems:
            return f"run {self.run_id}; see {self.run_json}"
        stale = (f"; `actsearch runs` will show run {self.run_id} as interrupted"
                 if self.store.path in self.unwritten else "")
        return f"run {self.run_id}; recording the failure failed too: {_joined(problems)}{stale}"

    def _attempt(self, path: str, write: Callable[[], None]) -> None:
        """Runs one bookkeeping write on an error path. A failure is remembered per file (the
        first reason) instead of raised: raising would hide the error being recorded, and
        whatever filled the disk fails these writes as well."""
        try:
            write()
        except Exception as e:                       # noqa: BLE001 - reported, never masking
            self.unwritten.setdefault(path, f"{type(e).__name__}: {e}")

    # ---- one component -------------------------------------------------------------------

    def _run_component(self, component: Component) -> None:
        input_dict = {name: [a for ch in channels
                             for a in self.produced[(ch.producer_id, ch.output_name)]]
                      for name, channels in component.inputs.items()}
        key = compute_cache_key(component, input_dict)
        source = self._cache_hit(component, key) if self.pipeline.enable_cache else None
        if source is not None:
            eid = self.store.record_cached(self.run_id, component.id, component.type_name,
                                           source, input_dict)
            outputs, results = self.store.outputs_of(source.id), source.results
            result = ComponentResult(component.id, md.CACHED, eid, 0.0, outputs)
            self.emit(ProgressEvent(component.id, f"cached (reusing execution {source.id})"))
        else:
            result, results = self._execute(component, input_dict, key)
        for name, arts in result.outputs.items():
            self.produced[(component.id, name)] = arts
        self._add_results(component.id, results)
        self.components[component.id] = result
        self._set_state(component.id, result)

    def _cache_hit(self, component: Component, key: str) -> md.ExecutionRecord | None:
        for candidate in self.store.find_complete(key):
            outputs = self.store.outputs_of(candidate.id)
            if set(outputs) == set(component.SPEC_CLASS.OUTPUTS) and all(
                    os.path.isdir(a.uri) for arts in outputs.values() for a in arts):
                return candidate
        return None

    def _execute(self, component: Component, input_dict: dict[str, list[Artifact]],
                 key: str) -> tuple[ComponentResult, dict[str, str]]:
        cid, spec = component.id, component.SPEC_CLASS
        eid = self.store.start_execution(self.run_id, cid, component.type_name, key,
                                         component.exec_properties, input_dict)
        staged = {name: _output_dirs(self.root, cid, name, eid, self.run_id) for name in spec.OUTPUTS}
        resume_dir = resume_dir_for(self.root, cid, compute_cache_key(component, input_dict, for_resume=True))
        start = time.monotonic()
        try:  # from here on every error is recorded against this execution
            self.doc["components"][cid] = {"state": "running", "execution_id": eid}
            self._write_run_json()
            self.emit(ProgressEvent(cid, f"started (execution {eid})"))
            output_dict = _stage_outputs(spec, key, staged)
            note = unusable_attempt_note(resume_dir)
            if note:
                self.emit(ProgressEvent(cid, note))
            context = ExecutorContext(component_id=cid, run_id=self.run_id, execution_id=eid,
                                      resume_dir=resume_dir, on_progress=self.emit)
            executor = component.EXECUTOR_CLASS(context=context)
            executor.Do(copy.deepcopy(input_dict), output_dict,
                        copy.deepcopy(component.exec_properties))
            stop_if_interrupted(f"component {cid!r}")  # a Ctrl-C swallowed inside the step
            results = _publish(spec, cid, output_dict, staged, context.results)
            self.store.complete_execution(eid, output_dict, results)
        except BaseException as e:
            self._record_unfinished(cid, eid, e, time.monotonic() - start, staged)
            raise
        shutil.rmtree(resume_dir, ignore_errors=True)
        duration = time.monotonic() - start
        self.emit(ProgressEvent(cid, f"complete in {duration:.1f} s"))
        return ComponentResult(cid, md.COMPLETE, eid, duration, output_dict), results

    def _record_unfinished(self, cid: str, eid: int, e: BaseException, duration: float,
                           staged: dict[str, tuple[str, str]]) -> None:
        """Records a step that raised: INTERRUPTED when Ctrl-C or SIGTERM stopped it (it is not
        broken, and `runs`/`show` must not count it as failed), FAILED otherwise. Either way
        nothing it staged is published and its resume state stays for the next run. The staged
        outputs go first: on a full disk that frees the space the records need. The records
        never raise (see `_attempt`): `e` is what the user must see."""
        for paths in staged.values():
            for path in paths:
                shutil.rmtree(path, ignore_errors=True)
        if interrupted_by_user(e):
            state, error = md.INTERRUPTED, f"stopped by {stopped_by(e)}"
            record, line = self.store.interrupt_execution, f"{error} after {duration:.1f} s"
        else:
            state, error = md.FAILED, f"{type(e).__name__}: {e}"
            record, line = self.store.fail_execution, f"FAILED after {duration:.1f} s: {error}"
        self._attempt(self.store.path, lambda: record(eid, error))
        self.components[cid] = ComponentResult(cid, state, eid, duration, {}, error)
        self._note_state(cid, self.components[cid])
        self._attempt(self.run_json, self._write_run_json)
        self.emit(ProgressEvent(cid, line))

    # ---- run.json ------------------------------------------------------------------------

    def _add_results(self, component_id: str, results: dict[str, str]) -> None:
        for name, path in results.items():
            if name in self.results and self.results[name] != path:
                logging.warning("result %r from %r replaces %s", name, component_id,
                                self.results[name])
            self.results[name] = path

    def _set_state(self, component_id: str, result: ComponentResult) -> None:
        self._note_state(component_id, result)
        self._write_run_json()

    def _note_state(self, component_id: str, result: ComponentResult) -> None:
        """Updates run.json's document only; the caller decides how a failed write is met."""
        self.doc["components"][component_id] = {
            "state": result.state.lower(), "execution_id": result.execution_id,
            "duration_s": round(result.duration_s, 3),
            "outputs": {name: [a.uri for a in arts] for name, arts in result.outputs.items()},
            "error": result.error,
        }

    def _write_run_json(self) -> None:
        """Replaces run.json atomically; a failed write (a full disk) leaves no `.tmp` behind."""
        tmp = self.run_json + ".tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(self.doc, f, indent=2)
            os.replace(tmp, self.run_json)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise


def _stop_message(e: BaseException, current: str | None, by_user: bool) -> str:
    """What stopped the run; `current` is None when it stopped before any component."""
    what = "the run" if current is None else f"component {current!r}"
    if by_user:
        return f"{what} was stopped by {stopped_by(e)}"
    return f"{what} {'could not start' if current is None else 'failed'}: {type(e).__name__}: {e}"


def _joined(problems: list[str]) -> str:
    return "; ".join(problems)


def _output_dirs(root: str, cid: str, name: str, eid: int, run_id: str) -> tuple[str, str]:
    """(staging, final) directory of an output of execution `eid`: `<eid>`, or `<eid>-<run id>`
    when that name is taken on disk. A store that lost its records (metadata.sqlite deleted or
    truncated) numbers executions from 1 again; the directories of the lost executions are left
    alone rather than clobbered (a rename onto them failed, or replaced an empty one)."""
    base = os.path.join(root, cid, name)
    for label in (str(eid), f"{eid}-{run_id}"):
        tmp, final = os.path.join(base, f".{label}.tmp"), os.path.join(base, label)
        if not os.path.lexists(tmp) and not os.path.lexists(final):
            return tmp, final
    raise PipelineError(f"component {cid!r}: the output directories of execution {eid} already exist under "
                        f"{base} (from a run {run_id!r}?); move them away and run again", component_id=cid)


def _stage_outputs(spec: type[ComponentSpec], key: str,
                   staged: dict[str, tuple[str, str]]) -> dict[str, list[Artifact]]:
    """Creates the staging directories the executor writes into (published by `_publish`)."""
    output_dict = {}
    for name, (tmp, _) in staged.items():
        os.makedirs(tmp)
        output_dict[name] = [Artifact(spec.OUTPUTS[name].type_name, tmp,
                                      fingerprint=output_fingerprint(key, name))]
    return output_dict


def _publish(spec: type[ComponentSpec], cid: str, output_dict: dict[str, list[Artifact]],
             staged: dict[str, tuple[str, str]], registered: Mapping[str, str]) -> dict[str, str]:
    """Renames the checked staging directories to their final names (so outputs appear only
    once complete) and returns the execution's results at their published paths."""
    _check_outputs(cid, output_dict, staged)
    for name, (tmp, final) in staged.items():
        os.rename(tmp, final)
        output_dict[name][0].uri = final
    results = {name: _published_path(path, staged) for name, path in registered.items()}
    for name, ospec in spec.OUTPUTS.items():
        if ospec.publish_as:
            results[ospec.publish_as] = output_dict[name][0].uri
    return results


def _check_outputs(cid: str, output_dict: dict[str, list[Artifact]],
                   staged: dict[str, tuple[str, str]]) -> None:
    """Executors may set artifact properties, but not replace, add or move artifacts."""
    for name, (tmp, _) in staged.items():
        arts = output_dict.get(name)
        if not arts or len(arts) != 1 or arts[0].uri != tmp:
            raise PipelineError(f"component {cid!r}: executor changed output {name!r}; it must "
                                f"write into output_dict[{name!r}][0].uri and keep the artifact",
                                component_id=cid)
        try:
            json.dumps(arts[0].properties, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise PipelineError(f"component {cid!r}: properties of output {name!r} are not "
                                f"JSON-serialisable: {e}", component_id=cid) from None


def _published_path(path: str, staged: dict[str, tuple[str, str]]) -> str:
    """Maps a registered path inside a staging directory to its published location."""
    for tmp, final in staged.values():
        if path == tmp or path.startswith(tmp + os.sep):
            return final + path[len(tmp):]
    return path


def _remove_partial_outputs(root: str, execution: md.ExecutionRecord) -> None:
    """Removes what an interrupted execution staged or had published. A published `<id>` older
    than the execution belongs to an execution of a lost store with the same number
    (`_output_dirs`), not to this one: it stays."""
    names = [f".{execution.id}.tmp", str(execution.id)]
    if execution.run_id:  # `_output_dirs`' second choice
        label = glob.escape(f"{execution.id}-{execution.run_id}")
        names += [f".{label}.tmp", label]
    for name in names:
        for path in glob.glob(os.path.join(glob.escape(root), glob.escape(execution.component_id), "*", name)):
            if name == str(execution.id) and _older_than(path, execution.start_time):
                continue
            shutil.rmtree(path, ignore_errors=True)


def _older_than(path: str, start_time: float) -> bool:
    """Whether `path` was last changed before `start_time` (1 s of file-system time rounding)."""
    try:
        return os.path.getmtime(path) < start_time - 1.0
    except OSError:
        return False


def _check_writable(root: str) -> None:
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as e:
        raise PipelineError(f"cannot create pipeline_root {root!r}: {e.strerror}") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise PipelineError(f"pipeline_root {root!r} is not writable")


def root_in_use(root: str) -> bool:
    """Whether a run holds pipeline_root's lock right now. A run recorded as RUNNING while no
    process holds the lock was stopped (killed, or its machine went down); the next run on the
    root records it as INTERRUPTED, and `actsearch runs` shows it so before then."""
    try:
        lock = open(os.path.join(root, ".lock"))
    except FileNotFoundError:
        return False
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False


@contextlib.contextmanager
def _exclusive(root: str) -> Iterator[None]:
    """Only one run at a time may use a pipeline_root (stale RUNNING records are then safe to
    treat as interrupted)."""
    with open(os.path.join(root, ".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PipelineError(f"another run is using pipeline_root {root!r}; wait for it "
                                f"or choose another pipeline_root") from None
        yield


def _with_heartbeat(emit: Callable[[ProgressEvent], None], run_json: str) -> Callable[[ProgressEvent], None]:
    """`emit` that also touches run.json: its time then says when a run that was killed was last
    alive, which the next run records as its end (`locked_store`) instead of its own start."""
    def emit_and_touch(event: ProgressEvent) -> None:
        emit(event)
        try:
            os.utime(run_json)
        except OSError:
            pass  # not written yet, or a full disk: the end time is then only less exact

    return emit_and_touch


def last_alive(root: str) -> dict[str, float]:
    """{run id: when it was last alive} for the run run.json belongs to (the local runner
    touches it with every progress line); empty when there is none to read."""
    path = os.path.join(root, "run.json")
    try:
        with open(path) as f:
            run_id = json.load(f).get("run_id")
        return {run_id: os.path.getmtime(path)} if isinstance(run_id, str) else {}
    except (OSError, ValueError, AttributeError):
        return {}


@contextlib.contextmanager
def locked_store(root: str, metadata_path: str | None = None) -> Iterator[md.MetadataStore]:
    """Holds pipeline_root's run lock and opens its metadata store for one run. Both runners
    (local and kfp-local) run inside it, so they exclude each other; holding the lock, runs a
    stopped process left RUNNING are known to be dead and are recorded as INTERRUPTED."""
    path = metadata_path or os.path.join(root, "metadata.sqlite")
    with _exclusive(root):
        with _store_errors(path):
            store = md.MetadataStore(path)
        with store:
            with _store_errors(path):
                stale = store.mark_interrupted(
                    "interrupted: the process running it stopped before it finished", last_alive=last_alive(root))
            for execution in stale:
                _remove_partial_outputs(root, execution)
            yield store


@contextlib.contextmanager
def _store_errors(path: str) -> Iterator[None]:
    """A store that cannot be opened or written before a run starts (a full disk, a broken
    file) is a run that could not start: one line naming the store, not a traceback."""
    try:
        yield
    except sqlite3.Error as e:
        raise PipelineError(f"cannot use the metadata store {path}: {type(e).__name__}: {e}") from e
