"""Fan-out of independent jobs (training runs, search trials) through Apache Beam.

A job is a JSON-able dict naming a function (`"module:function"`) and its keyword arguments.
`run_jobs` runs a list of them and returns their results in order:

* `parallelism == 1` and no Beam options: in this process, one after another (no start-up cost);
* otherwise a Beam pipeline: by default Beam's local runner in multi-processing mode with
  `parallelism` worker processes; any Beam runner through `beam_options` (e.g.
  `["--runner=DataflowRunner", "--project=...", ...]`). Jobs and their results travel through
  `work_dir` (and the Examples through their URI), so on a remote runner these must be on a file
  system the workers share (a network mount); the driver finds results by polling the folder.

Every finished job writes its result to `<work_dir>/<job_id>.json` at once, which gives two things:
progress while the Beam pipeline runs (the driver polls the folder), and resume: a fan-out that
was interrupted re-runs only the jobs without a result file. A job that raises is recorded as a
failure result (`{"failed": true, "error": ...}`), so one bad candidate never sinks the batch.

Each start of a job is counted (`<job_id>.attempts`). A job that raised is run once more (a
transient error such as a full disk should not decide a comparison; the progress callback is told,
`retry_note`); a job that took its process down (killed, out of memory) and was started
`MAX_STARTS_WITHOUT_RESULT` times in a row *without progress* is recorded as failed
(`"process_died": true`) instead of being started on every resume for ever. A Ctrl-C
(KeyboardInterrupt) does not count as a start: the user stopped the run, the job did not crash.

A killed run (the OOM killer, a pre-emption, `kill -9` of the whole run) also leaves a start
without a result, although its job was getting on: a 300-epoch final run killed three times at
epochs 71, 139 and 207 must not be written off. So a job may name a progress signal, a file or
folder that grows as it gets further (`progress_path`: the job's `"progress"` entry, else its
function's `progress_path` attribute; training runs name their `history.csv`, one row per epoch),
and the fan-out reads from it how far the job has got (`progress_count`: its function's
`progress_count` attribute, else the lines of the file or the files of the folder; training runs
count their epochs). The attempts file keeps the highest count seen (`progress_max`); a start after
which the count exceeded it got further and does not count against the job. A high-water mark,
not a file's size and time: a training run rewrites or removes its history at each start
(`trim_history`, down to its backup's epochs), so a run killed after its first epoch at every start
(out of memory while saving its backup) changed the file each time and was never written off. A job
that takes its process down before it gets further than ever is still written off after three
starts (a job without a signal counts every start, as before).

Files are written through a temporary file, flushed to disk and renamed (`_write_json`). One that
does not parse all the same (0 bytes or cut short after a power loss on a file system that
reorders the rename before the data) is moved aside with a warning naming it and treated as
missing: an unreadable result makes the job run again, an unreadable attempts file counts as no
start. Before, it raised `JSONDecodeError` on every rerun, failing the step for ever.

Without a `--runner` option the worker processes are ours (Beam's FnApiRunner running
`components.local_workers`): `parallelism` alone sets how many there are, so `beam_options` that
would change it are refused (`check_beam_options`). On Ctrl-C only the driver reports; it stops
the workers, waits until none is left and takes back the starts of the jobs they were running
(`_take_back_starts`). A worker that dies while the pipeline runs (killed, out of memory, a
segfault in TensorFlow) would leave FnApiRunner waiting for ever: the driver sees the death and
whose job it was, stops the pipeline as on Ctrl-C, keeps the start of the job that died (it took
its process down), takes back the others' and runs the jobs left in a new pipeline
(`_run_to_the_end`). A job that always takes its process down is thus recorded as failed after
`MAX_STARTS_WITHOUT_RESULT` starts without progress, and the search goes on.
"""

from __future__ import annotations

import importlib
import json
import logging as std_logging
import os
import threading
import time
import traceback
from typing import Any, Callable, Mapping, Sequence

from absl import logging

from components import local_workers
from components.base import interrupted_by_user, stop_if_interrupted

ProgressFn = Callable[[int, int, Mapping[str, Any] | None], None]

MAX_ATTEMPTS = 2
"""Starts of a job that raised: once, and once more (a transient error should not decide)."""
MAX_STARTS_WITHOUT_RESULT = 3
"""Starts in a row of a job that neither wrote a result nor made progress (its process died each
time) before it is recorded as failed. Three, not two: without a progress signal a killed run looks
the same as a job that took its process down."""
RETRY_NOTE = "; trying it once more"
"""What a progress line adds for a failed result the fan-out runs once more (`retry_note`)."""
UNREADABLE_SUFFIX = ".unreadable"
"""Where a result or attempts file that does not parse is moved (kept for a look, out of the way)."""


LOCAL_RUNNER_SETTINGS = {
    "--direct_num_workers": "it sets the number of the local runner's worker processes, which --parallel_trials "
                            "decides: use --parallel_trials instead",
    "--direct_running_mode": "it sets how the local runner's workers run, which --parallel_trials decides (above 1: "
                             "one worker process per job at once): use --parallel_trials instead",
    "--direct_runner_bundle_repeat": "it makes the local runner run every job more than once: leave it out "
                                     "(--parallel_trials sets how many jobs run at once)",
}
"""Beam `DirectOptions` that change how many jobs the local runner runs at once, or how often
(the messages name the command line's --parallel_trials, which is `run_jobs`' `parallelism`).
Each job takes cores // parallelism threads (and its own GPU), so more workers than
`parallelism` would run jobs side by side with full thread pools and change their results. The
other `DirectOptions` do not touch the FnApiRunner's workers (tests/test_fanout.py lists them)."""

class FanoutError(RuntimeError):
    """The Beam pipeline itself failed (not a single job, which is recorded as a failure)."""


def _resolve(path: str) -> Callable[..., Mapping[str, Any]]:
    module_name, _, function_name = path.partition(":")
    if not module_name or not function_name:
        raise ValueError(f"job function {path!r} must be 'module:function'")
    return getattr(importlib.import_module(module_name), function_name)


def _result_path(work_dir: str, job_id: str) -> str:
    return os.path.join(work_dir, f"{job_id}.json")


def _attempts_path(work_dir: str, job_id: str) -> str:
    return os.path.join(work_dir, f"{job_id}.attempts")


def _write_json(path: str, value: Any) -> None:
    """Writes `value` atomically: a temporary file, flushed to the disk before the rename. Without
    the fsync a power loss can leave the renamed file empty or cut short (the rename reaches the
    disk before the data on some file systems)."""
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)


def _read_json(path: str, valid: Callable[[Any], bool], treated_as: str) -> Any | None:
    """The parsed file, None when it is missing or unreadable. An unreadable one (does not parse,
    or `valid` rejects it: a crash mid-write) is moved to `<path>.unreadable` with a warning naming
    it, so that it is reported once and the next reader finds it missing, as it is treated."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
        if valid(value):
            return value
        problem = f"unexpected content {type(value).__name__}"
    except FileNotFoundError:
        return None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        problem = f"{type(error).__name__}: {error}"
    try:
        os.replace(path, path + UNREADABLE_SUFFIX)
        kept = f"moved to {path + UNREADABLE_SUFFIX}"
    except OSError as error:
        kept = f"could not be moved aside ({error})"
    logging.warning("%s is unreadable (%s; cut short by a crash while it was written?): treated as %s; %s",
                    path, problem, treated_as, kept)
    return None


def _start_record(work_dir: str, job_id: str) -> dict[str, Any]:
    """The job's attempts file: {"starts", "without_progress" (starts in a row that neither wrote a
    result nor got the job further than ever), "progress_max" (the highest progress count seen at a
    start), "failures" (starts that wrote a failure result)}. Older files stay readable: a bare count
    (written before progress was tracked) counts all its starts as without progress, its failures as
    unknown (None); a size-and-time mark (`"progress"`, before the count) says no count, so 0, was
    seen; an unreadable file counts as no start."""
    value = _read_json(_attempts_path(work_dir, job_id),
                       lambda v: isinstance(v, dict) or (isinstance(v, int) and not isinstance(v, bool)),
                       "no start of the job yet")
    if value is None:
        return {"starts": 0, "without_progress": 0, "progress_max": 0, "failures": 0}
    if isinstance(value, int):
        return {"starts": value, "without_progress": value, "progress_max": 0, "failures": None}
    failures, most = value.get("failures"), value.get("progress_max")
    return {"starts": int(value.get("starts", 0)), "without_progress": int(value.get("without_progress", 0)),
            "progress_max": most if isinstance(most, int) and not isinstance(most, bool) else 0,
            "failures": None if failures is None else int(failures)}


def attempts(work_dir: str, job_id: str) -> int:
    """How many times the job was started in `work_dir` (with or without progress)."""
    return _start_record(work_dir, job_id)["starts"]


def _job_hook(job: Mapping[str, Any], name: str) -> Callable[..., Any] | None:
    """The attribute `name` of the job's function (None when it has none or does not resolve: a
    job that cannot even be resolved fails when it runs, with its own error)."""
    try:
        return getattr(_resolve(job["fn"]), name, None)
    except Exception:  # noqa: BLE001
        return None


def progress_path(job: Mapping[str, Any]) -> str | None:
    """The file or folder that shows a job getting further: the job's `"progress"` entry, else
    what its function's `progress_path` attribute returns for the job's arguments (so the fan-out
    needs no knowledge of what a job does), else None (every start counts against the job)."""
    if job.get("progress"):
        return str(job["progress"])
    hook = _job_hook(job, "progress_path")
    try:
        return hook(**job.get("args", {})) if hook else None
    except Exception:  # noqa: BLE001 - arguments it cannot take fail when the job runs
        return None


def count_entries(path: str) -> int:
    """How far a progress signal says its job got, by default: the non-empty lines of a file (a log
    with a line per step), the files in a folder; 0 when there is nothing (yet)."""
    if os.path.isdir(path):
        return sum(len(files) for _, _, files in os.walk(path))
    try:
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return 0


def progress_count(job: Mapping[str, Any]) -> int:
    """How far the job has got by its progress signal: its function's `progress_count` attribute
    applied to `progress_path(job)`, else `count_entries`; 0 without a signal. A number, not the
    signal's look: only a count above the highest seen shows that a start got further."""
    path = progress_path(job)
    if not path:
        return 0
    count = _job_hook(job, "progress_count") or count_entries
    try:
        return max(0, int(count(path)))
    except Exception:  # noqa: BLE001 - a signal that cannot be read shows no progress
        return 0


def _without_progress(record: Mapping[str, Any], count: int) -> int:
    """The starts in a row without progress once the count is `count`: 0 when it exceeds the
    highest count seen at an earlier start (the last start got further than ever)."""
    return 0 if count > record["progress_max"] else record["without_progress"]


def starts_without_progress(work_dir: str, job: Mapping[str, Any]) -> int:
    """The job's starts in a row that did not get it further than ever: 0 when its progress count
    rose above the recorded maximum since the last start (that start got somewhere: a kill of the
    whole run, not a job that takes its process down), else the recorded count."""
    return _without_progress(_start_record(work_dir, job["id"]), progress_count(job))


def _count_start(work_dir: str, job: Mapping[str, Any]) -> dict[str, Any]:
    """Counts a start of the job and raises its progress high-water mark; returns the record before
    it, which `_uncount_start` puts back when the start does not count (Ctrl-C, stopped by the
    driver)."""
    before = _start_record(work_dir, job["id"])
    count = progress_count(job)
    _write_json(_attempts_path(work_dir, job["id"]), dict(
        before, starts=before["starts"] + 1, without_progress=_without_progress(before, count) + 1,
        progress_max=max(count, before["progress_max"])))
    return before


def _uncount_start(work_dir: str, job_id: str, before: Mapping[str, Any]) -> None:
    _write_json(_attempts_path(work_dir, job_id), dict(before))


def _ended_start(work_dir: str, job_id: str, failed: bool) -> None:
    """Records a start that wrote a result: it did not take its process down, so the count of
    starts in a row without progress begins again (a job that raised, then was killed in its
    retry, is judged by the starts after its result); a failure result is counted (`_retried`)."""
    record = _start_record(work_dir, job_id)
    failures = (record["failures"] or 0) + 1 if failed else record["failures"]
    _write_json(_attempts_path(work_dir, job_id), dict(record, without_progress=0, failures=failures))


def _retried(work_dir: str, job_id: str, result: Mapping[str, Any]) -> bool:
    """Whether a failure result is run once more: the job raised (or returned a failure) once so
    far. Counted by failures, not starts: kills of the whole run add starts, and a job killed twice
    that then hit a transient error deserves its second try all the same. A job recorded as failed
    because its process died is not run again; neither is a diverged run (a result). With an
    attempts file of a bare count (written before failures were counted), by its starts."""
    if not result.get("failed") or result.get("process_died"):
        return False
    record = _start_record(work_dir, job_id)
    failures = record["starts"] if record["failures"] is None else record["failures"]
    return failures < MAX_ATTEMPTS


def retry_note(result: Mapping[str, Any] | None) -> str:
    """`RETRY_NOTE` for a result the fan-out reported as failed and will run once more (its
    `"retrying"` entry), else "": a progress line then reads as the first of two attempts."""
    return RETRY_NOTE if result and result.get("retrying") else ""


def _as_reported(work_dir: str, job_id: str, result: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The result handed to the progress callback: marked `"retrying"` when it will run again."""
    if result is None:
        return None
    return dict(result, retrying=True) if _retried(work_dir, job_id, result) else dict(result)


def execute_job(job: Mapping[str, Any], work_dir: str, parallelism: int = 1) -> dict[str, Any]:
    """Runs one job and writes its result file (atomically); returns the result."""
    local_workers.set_worker_entry({"job": job["id"]})  # before the start is counted: a death is charged to this job
    started = _count_start(work_dir, job)
    slot = None
    if parallelism > 1:
        slot = local_workers.claim_worker_slot(work_dir, parallelism)
        local_workers.share_machine(parallelism, slot)
    start = time.time()
    try:
        result = dict(_resolve(job["fn"])(**job.get("args", {})))
        stop_if_interrupted(f"job {job['id']}")  # a Ctrl-C swallowed inside the job: its result is not one
    except BaseException as error:  # noqa: BLE001
        if interrupted_by_user(error):  # the user stopped the run: not one of the job's starts
            _uncount_start(work_dir, job["id"], started)
            if isinstance(error, KeyboardInterrupt):
                raise
            raise KeyboardInterrupt(f"job {job['id']} was stopped") from error  # TensorFlow wrapped it
        if not isinstance(error, Exception):
            raise
        # A job failure is data, not a crash.
        logging.warning("job %s failed: %s", job["id"], error)
        result = {"failed": True, "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    result.setdefault("job_id", job["id"])
    result.setdefault("worker_slot", slot)
    result.setdefault("job_seconds", time.time() - start)
    # Counted before the result is written: the driver, seeing the result, reads whether it is retried.
    _ended_start(work_dir, job["id"], bool(result.get("failed")))
    _write_json(_result_path(work_dir, job["id"]), result)
    local_workers.set_worker_entry({"job": None})
    return result


def load_result(work_dir: str, job_id: str) -> dict[str, Any] | None:
    """The result a job wrote into `work_dir`, None if it has not finished. A result file that
    does not parse (cut short by a crash) counts as missing, with a warning naming it: the job
    runs again instead of the step failing on every rerun."""
    return _read_json(_result_path(work_dir, job_id), lambda value: isinstance(value, dict),
                      "missing: the job runs again")


def _option_name(item: str) -> str:
    """`--name=value` -> `--name`."""
    return item.split("=", 1)[0].strip()


def names_runner(beam_options: Sequence[str]) -> bool:
    """Whether `beam_options` choose a Beam runner; if not, the fan-out runs Beam's local runner."""
    return any(_option_name(item) == "--runner" for item in beam_options)


LOCAL_RUNNER_CLASSES = ("DirectRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner", "FnApiRunner")
"""Beam's in-process runners, which read `DirectOptions` (Prism, the default `DirectRunner`'s
first choice, falls back to the FnApiRunner on a machine that cannot start it)."""


def _named_runner(beam_options: Sequence[str]) -> str | None:
    """The value of the last `--runner` option (as Beam's parser keeps it), None without one."""
    named = None
    for i, item in enumerate(beam_options):
        if _option_name(item) == "--runner":
            if "=" in item:
                named = item.split("=", 1)[1].strip()
            elif i + 1 < len(beam_options):  # `--runner DirectRunner` as two items
                named = beam_options[i + 1].strip()
    return named


def _is_local_runner(name: str | None) -> bool:
    """Whether a `--runner` value names one of `LOCAL_RUNNER_CLASSES`, spelt as Beam accepts it:
    any case, with or without "Runner", or the class's full dotted path."""
    short = (name or "").rsplit(".", 1)[-1].lower()
    return any(short in (cls.lower(), cls.lower()[: -len("runner")]) for cls in LOCAL_RUNNER_CLASSES)


def check_beam_options(beam_options: Sequence[str]) -> None:
    """Raises ValueError for a setting of the local runner's workers: without a `--runner` option
    `parallelism` alone decides them (see `LOCAL_RUNNER_SETTINGS`), and with a named local runner
    they would run jobs side by side with the thread pools `parallelism` gives one job.
    `beam_options` are outside the cache key, so one that changed results would make cached
    results disagree."""
    runner = _named_runner(beam_options)
    if names_runner(beam_options) and not _is_local_runner(runner):
        return
    where = f"with --runner={runner}" if runner else "without a --runner option"
    for item in beam_options:
        reason = LOCAL_RUNNER_SETTINGS.get(_option_name(item))
        if reason:
            raise ValueError(f"beam_options: {item!r} is not allowed {where}: {reason}")


def beam_pipeline(beam_options: Sequence[str] = (), parallelism: int = 1, work_dir: str | None = None):
    """A `beam.Pipeline` for `beam_options`; without a `--runner` option, Beam's local
    FnApiRunner, with `parallelism` worker processes of `local_worker_main` when above 1, which
    register under `work_dir` (required then) so that the driver can stop them.

    The local runner is named directly because Beam's `DirectRunner` first tries its Prism
    runner, which downloads a binary from GitHub on first use: on a machine without internet
    that costs a failed download (or a long hang) before it falls back to the same FnApiRunner.
    """
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    check_beam_options(beam_options)
    options = list(beam_options)
    if names_runner(options):
        return beam.Pipeline(options=PipelineOptions(options))
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner, fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle
    from apache_beam.transforms.environments import SubprocessSDKEnvironment

    environment = None
    if parallelism > 1:
        if work_dir is None:
            raise ValueError("beam_pipeline needs a work_dir for worker processes (parallelism above 1)")
        environment = SubprocessSDKEnvironment.from_command_string(local_workers.worker_command(work_dir))
        # Worker processes log every gRPC hand-shake at INFO; their warnings and errors still show.
        options += [f"--direct_num_workers={parallelism}", "--default_sdk_harness_log_level=WARNING"]
        std_logging.getLogger(fn_runner.__name__).addFilter(_no_running_mode_warning)
    options = PipelineOptions(options)
    # The worker processes read their options from the provision info (as under DirectRunner).
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    provision = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return beam.Pipeline(runner=FnApiRunner(default_environment=environment, provision_info=provision),
                         options=options)


def _no_running_mode_warning(record: std_logging.LogRecord) -> bool:
    """FnApiRunner warns that `direct_num_workers` wants `direct_running_mode`, which would replace
    our worker command with Beam's own; the workers are processes all the same."""
    return not record.getMessage().startswith("If direct_num_workers is not equal to 1")


def _run_beam(jobs: Sequence[Mapping[str, Any]], work_dir: str, parallelism: int, beam_options: Sequence[str]) -> None:
    import apache_beam as beam

    payload = [json.dumps(job) for job in jobs]
    with beam_pipeline(beam_options, parallelism, work_dir) as pipeline:
        _ = (
            pipeline
            | "Jobs" >> beam.Create(payload)
            | "Spread" >> beam.Reshuffle()
            | "Run" >> beam.Map(lambda text, d=work_dir, p=parallelism: execute_job(json.loads(text), d, p)["job_id"])
        )


def _status(work_dir: str, job: Mapping[str, Any]) -> str:
    """"done", "pending" (no result yet, or a failure run once more) or "written off": a job that
    took its process down `MAX_STARTS_WITHOUT_RESULT` times in a row without progress, which this
    records as failed (it would be started on every resume for ever)."""
    result = load_result(work_dir, job["id"])
    if result is not None and not _retried(work_dir, job["id"], result):
        return "done"
    without = starts_without_progress(work_dir, job)
    if without < MAX_STARTS_WITHOUT_RESULT:
        return "pending"
    _write_off(work_dir, job, without, result)
    return "written off"


def _write_off(work_dir: str, job: Mapping[str, Any], without: int, earlier: Mapping[str, Any] | None) -> None:
    """Records a job whose process died at each of its last `without` starts as failed. The
    result says `process_died`: an infrastructure failure (memory, kills), not a property of
    what the job computes, which consumers must not score as one (a diverged run)."""
    path = _result_path(work_dir, job["id"])
    signal = " without progress" if progress_path(job) else ""
    error = (f"started {without} times{signal} and never finished: its process died (killed, out of memory "
             "or crashed)")
    if earlier and earlier.get("error"):
        error += f"; before that it failed with: {earlier['error']}"
    logging.warning("job %s is recorded as failed: %s. To run it again, delete %s and %s", job["id"], error,
                    path, _attempts_path(work_dir, job["id"]))
    _write_json(path, {"failed": True, "process_died": True, "job_id": job["id"], "error": error})


def _triage(jobs: Sequence[Mapping[str, Any]], work_dir: str) -> tuple[list[Mapping[str, Any]], list[str]]:
    """(the jobs that must still run, the ids of the jobs written off just now)."""
    statuses = {job["id"]: _status(work_dir, job) for job in jobs}
    return ([job for job in jobs if statuses[job["id"]] == "pending"],
            [job_id for job_id, status in statuses.items() if status == "written off"])


def _pending(jobs: Sequence[Mapping[str, Any]], work_dir: str) -> list[Mapping[str, Any]]:
    return _triage(jobs, work_dir)[0]


def _report_resumed(jobs, pending, written_off: Sequence[str], work_dir: str, progress: ProgressFn | None) -> None:
    """Says what a batch found from earlier attempts: how many jobs were done (`progress(done,
    total, None)`, also when all were), then each job written off now, with its failure result
    (it was not done by an earlier attempt: it never finished)."""
    if not progress:
        return
    done = len(jobs) - len(pending) - len(written_off)
    if done:
        progress(done, len(jobs), None)
    for count, job_id in enumerate(written_off, 1):
        progress(done + count, len(jobs), load_result(work_dir, job_id))


def run_jobs(
    jobs: Sequence[Mapping[str, Any]],
    work_dir: str,
    *,
    parallelism: int = 1,
    beam_options: Sequence[str] = (),
    progress: ProgressFn | None = None,
    poll_seconds: float = 1.0,
) -> list[dict[str, Any]]:
    """Runs every job that has no result yet in `work_dir` (and once more each job that raised);
    returns all results in job order."""
    if parallelism < 1:
        raise ValueError(f"parallelism must be at least 1, got {parallelism}")
    check_beam_options(beam_options)
    ids = [job["id"] for job in jobs]
    if len(set(ids)) != len(ids):
        raise ValueError("job ids must be unique")
    os.makedirs(work_dir, exist_ok=True)
    for attempt in range(MAX_ATTEMPTS):
        pending, written_off = _triage(jobs, work_dir)
        if attempt == 0:
            _report_resumed(jobs, pending, written_off, work_dir, progress)
        if not pending:
            break
        _run_to_the_end(jobs, pending, work_dir, parallelism, beam_options, progress, poll_seconds)
    results = [load_result(work_dir, job_id) for job_id in ids]
    missing = [job_id for job_id, result in zip(ids, results) if result is None]
    if missing:
        raise FanoutError(f"jobs {missing} produced no result")
    return results


def _run_to_the_end(jobs, pending, work_dir: str, parallelism: int, beam_options: Sequence[str],
                    progress: ProgressFn | None, poll_seconds: float) -> None:
    """Runs `pending`, and after a worker process died (which stops the pipeline) the jobs left in a
    new pipeline. The loop ends: each death either uses up a start of the job that died, recorded as
    failed after MAX_STARTS_WITHOUT_RESULT starts in a row without progress (`_status`; a job that
    progressed between deaths gets closer to its end), or counts as a death with no job running (an
    idle worker killed), of which that many end the fan-out."""
    deaths_without_job = 0
    while pending:
        died = _run_pending(jobs, pending, work_dir, parallelism, beam_options, progress, poll_seconds)
        if not died:
            return
        deaths_without_job += died.count(None)
        if deaths_without_job >= MAX_STARTS_WITHOUT_RESULT:
            raise FanoutError(f"{deaths_without_job} worker processes died while running no job: is the machine "
                              "out of memory, or are they killed from outside?")
        pending = _pending(jobs, work_dir)
        _report_recorded_failures(jobs, pending, [job_id for job_id in died if job_id], work_dir, progress)


def _report_recorded_failures(jobs, pending, died: Sequence[str], work_dir: str, progress: ProgressFn | None) -> None:
    """Reports the jobs that died and are now recorded as failed (no pipeline reports them)."""
    if not progress:
        return
    left = {job["id"] for job in pending}
    recorded = [job_id for job_id in dict.fromkeys(died) if job_id not in left]
    done = len(jobs) - len(pending) - len(recorded)
    for count, job_id in enumerate(recorded, 1):
        progress(done + count, len(jobs), _as_reported(work_dir, job_id, load_result(work_dir, job_id)))


def _run_pending(jobs, pending, work_dir: str, parallelism: int, beam_options: Sequence[str],
                 progress: ProgressFn | None, poll_seconds: float) -> list[str | None]:
    """Runs `pending` once (in one Beam pipeline unless in this process, one after another);
    returns the jobs (None: none) whose worker process died and stopped the pipeline, else []."""
    total, done = len(jobs), len(jobs) - len(pending)
    if parallelism == 1 and not beam_options:
        for job in pending:
            result = execute_job(job, work_dir)
            done += 1
            if progress:
                progress(done, total, _as_reported(work_dir, job["id"], result))
        return []
    errors: list[BaseException] = []
    before = {job["id"]: load_result(work_dir, job["id"]) for job in pending}  # a failure being retried
    starts = {job["id"]: _start_record(work_dir, job["id"]) for job in pending}
    local = not names_runner(beam_options)  # Beam's FnApiRunner in this process
    workers = local and parallelism > 1  # ... with worker processes of ours
    if workers:
        local_workers.clear_workers(work_dir)
        local_workers.REPORTS.start()

    def target():
        try:
            _run_beam(pending, work_dir, parallelism, beam_options)
        except BaseException as error:  # noqa: BLE001 - re-raised in the driver thread
            errors.append(error)

    thread = threading.Thread(target=target, name="beam-fanout", daemon=True)
    registry = os.path.join(work_dir, local_workers.WORKERS_DIR) if workers else None
    try:
        thread.start()
        _follow(thread, pending, work_dir, before, done, total, progress, poll_seconds, registry)
    except BaseException as error:  # Ctrl-C above all, or a dead worker: stop what was started
        died = _died_jobs(error, work_dir, pending, before)
        stopped = [job for job in pending if job["id"] not in died]  # the job that died keeps its start
        threads = local_workers.REPORTS.abandon() if workers else set()

        def clean_up():
            if workers:
                local_workers.stop_pipeline(work_dir, threads)
            if local:
                _take_back_starts(work_dir, stopped, before, starts)

        local_workers.shielded(clean_up)
        if not isinstance(error, local_workers.WorkerDied):
            raise
        return died
    if workers:
        local_workers.REPORTS.release()
    if errors:
        raise FanoutError(f"the Beam fan-out failed: {errors[0]}") from errors[0]
    return []


def _died_jobs(error: BaseException, work_dir: str, pending, before: Mapping[str, Any]) -> list[str | None]:
    """For a `local_workers.WorkerDied`: the pending jobs (None: none) that died with their worker
    process; a job that had written its new result was over. Logs the deaths."""
    if not isinstance(error, local_workers.WorkerDied):
        return []
    died = [job_id if job_id in before and load_result(work_dir, job_id) == before[job_id] else None
            for job_id in error.jobs]
    jobs = {job["id"]: job for job in pending}
    for job_id in died:
        if job_id is None:
            logging.warning("a Beam worker process died while running no job: stopping its Beam pipeline, "
                            "the jobs left run in a new one")
        else:
            logging.warning("job %s took its Beam worker process down (killed, out of memory or crashed) %s: "
                            "stopping its Beam pipeline, the jobs left run in a new one", job_id,
                            _death_count(work_dir, jobs[job_id]))
    return died


def _death_count(work_dir: str, job: Mapping[str, Any]) -> str:
    """Where the start that just died leaves the job, judged now: the count recorded at its start
    would miss the progress it made before it died."""
    without = starts_without_progress(work_dir, job)
    if not without:
        return "after getting further than ever, so this start does not count against it"
    return f"at its start {without} in a row without progress, of at most {MAX_STARTS_WITHOUT_RESULT}"


def _follow(thread: threading.Thread, pending, work_dir: str, before: Mapping[str, Any], done: int, total: int,
            progress: ProgressFn | None, poll_seconds: float, registry: str | None = None) -> None:
    """Reports each job's new result as it appears, until the Beam pipeline's thread ends. Raises
    `local_workers.WorkerDied` when one of our worker processes (registered in `registry`) died
    while the pipeline runs: FnApiRunner would wait for its answer for ever."""
    seen: set[str] = set()
    while True:
        thread.join(timeout=poll_seconds)
        for job in pending:
            result = load_result(work_dir, job["id"])
            if job["id"] not in seen and result is not None and result != before[job["id"]]:
                seen.add(job["id"])
                if progress:
                    progress(done + len(seen), total, _as_reported(work_dir, job["id"], result))
        if not thread.is_alive():
            return
        died = local_workers.died_workers(registry) if registry else []
        if died:
            raise local_workers.WorkerDied(died)


def _take_back_starts(work_dir: str, pending, before: Mapping[str, Any],
                      starts: Mapping[str, Mapping[str, Any]]) -> None:
    """The jobs the driver stopped (no new result) get back the start they were counted: they did
    not take their process down, the user stopped the run or another job's process died (as
    `execute_job` does in-process on Ctrl-C). Called once no worker process is left, so none can
    start a job behind it."""
    for job in pending:
        unchanged = load_result(work_dir, job["id"]) == before[job["id"]]
        if unchanged and _start_record(work_dir, job["id"]) != starts[job["id"]]:
            _uncount_start(work_dir, job["id"], starts[job["id"]])
