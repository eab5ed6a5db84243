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
transient error such as a full disk should not decide a comparison); a job that took its process
down (killed, out of memory) and was started `MAX_STARTS_WITHOUT_RESULT` times is recorded as failed
instead of being started on every resume for ever. A Ctrl-C (KeyboardInterrupt) does not count as a
start: the user stopped the run, the job did not crash. A killed driver is indistinguishable from a
job that took its process down, hence three starts, not two: a user who kills a run twice while the
same job runs does not turn it into a failure. A run that *diverged* is a result, never retried.

Without a `--runner` option the worker processes are ours (Beam's FnApiRunner running
`components.local_workers`): `parallelism` alone sets how many there are, so `beam_options` that
would change it are refused (`check_beam_options`). On Ctrl-C only the driver reports; it stops
the workers, waits until none is left and takes back the starts of the jobs they were running
(`_take_back_starts`). A worker that dies while the pipeline runs (killed, out of memory, a
segfault in TensorFlow) would leave FnApiRunner waiting for ever: the driver sees the death and
whose job it was, stops the pipeline as on Ctrl-C, keeps the start of the job that died (it took
its process down), takes back the others' and runs the jobs left in a new pipeline
(`_run_to_the_end`). A job that always takes its process down is thus recorded as failed after
`MAX_STARTS_WITHOUT_RESULT` starts, and the search goes on.
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
"""Starts of a job that never wrote a result (its process died) before it is recorded as failed."""


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


def _write_json(path: str, value: Any) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, default=str)
    os.replace(path + ".tmp", path)


def attempts(work_dir: str, job_id: str) -> int:
    """How many times the job was started in `work_dir`."""
    try:
        with open(os.path.join(work_dir, f"{job_id}.attempts")) as f:
            return int(f.read() or 0)
    except FileNotFoundError:
        return 0


def execute_job(job: Mapping[str, Any], work_dir: str, parallelism: int = 1) -> dict[str, Any]:
    """Runs one job and writes its result file (atomically); returns the result."""
    local_workers.set_worker_entry({"job": job["id"]})  # before the start is counted: a death is charged to this job
    started = attempts(work_dir, job["id"])
    _write_json(os.path.join(work_dir, f"{job['id']}.attempts"), started + 1)
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
            _write_json(os.path.join(work_dir, f"{job['id']}.attempts"), started)
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
    _write_json(_result_path(work_dir, job["id"]), result)
    local_workers.set_worker_entry({"job": None})
    return result


def load_result(work_dir: str, job_id: str) -> dict[str, Any] | None:
    """The result a job wrote into `work_dir`, None if it has not finished."""
    path = _result_path(work_dir, job_id)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


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


def _needs_run(work_dir: str, job_id: str) -> bool:
    """Whether a job must (still) run; records a job that keeps killing its process as failed."""
    result, started = load_result(work_dir, job_id), attempts(work_dir, job_id)
    if result is None and started >= MAX_STARTS_WITHOUT_RESULT:
        logging.warning("job %s is recorded as failed: started %d times, it never finished (its process died)",
                        job_id, started)
        _write_json(_result_path(work_dir, job_id), {
            "failed": True, "job_id": job_id,
            "error": f"started {started} times and never finished: its process died (killed, out of memory "
                     "or crashed)"})
        return False
    return result is None or (bool(result.get("failed")) and started < MAX_ATTEMPTS)


def _pending(jobs: Sequence[Mapping[str, Any]], work_dir: str) -> list[Mapping[str, Any]]:
    return [job for job in jobs if _needs_run(work_dir, job["id"])]


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
        pending = _pending(jobs, work_dir)
        if not pending:
            break
        if progress and attempt == 0 and len(pending) < len(jobs):
            progress(len(jobs) - len(pending), len(jobs), None)  # what an earlier run finished
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
    failed after MAX_STARTS_WITHOUT_RESULT (`_needs_run`), or counts as a death with no job running
    (an idle worker killed), of which that many end the fan-out."""
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
        progress(done + count, len(jobs), load_result(work_dir, job_id))


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
                progress(done, total, result)
        return []
    errors: list[BaseException] = []
    before = {job["id"]: load_result(work_dir, job["id"]) for job in pending}  # a failure being retried
    starts = {job["id"]: attempts(work_dir, job["id"]) for job in pending}
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
        died = _died_jobs(error, work_dir, before)
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


def _died_jobs(error: BaseException, work_dir: str, before: Mapping[str, Any]) -> list[str | None]:
    """For a `local_workers.WorkerDied`: the pending jobs (None: none) that died with their worker
    process; a job that had written its new result was over. Logs the deaths."""
    if not isinstance(error, local_workers.WorkerDied):
        return []
    died = [job_id if job_id in before and load_result(work_dir, job_id) == before[job_id] else None
            for job_id in error.jobs]
    for job_id in died:
        if job_id is None:
            logging.warning("a Beam worker process died while running no job: stopping its Beam pipeline, "
                            "the jobs left run in a new one")
        else:
            logging.warning("job %s took its Beam worker process down (killed, out of memory or crashed) at its "
                            "start %d of at most %d: stopping its Beam pipeline, the jobs left run in a new one",
                            job_id, attempts(work_dir, job_id), MAX_STARTS_WITHOUT_RESULT)
    return died


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
                    progress(done + len(seen), total, result)
        if not thread.is_alive():
            return
        died = local_workers.died_workers(registry) if registry else []
        if died:
            raise local_workers.WorkerDied(died)


def _take_back_starts(work_dir: str, pending, before: Mapping[str, Any], starts: Mapping[str, int]) -> None:
    """The jobs the driver stopped (no new result) get back the start they were counted: they did
    not take their process down, the user stopped the run or another job's process died (as
    `execute_job` does in-process on Ctrl-C). Called once no worker process is left, so none can
    start a job behind it."""
    for job in pending:
        if load_result(work_dir, job["id"]) == before[job["id"]] and attempts(work_dir, job["id"]) != starts[job["id"]]:
            _write_json(os.path.join(work_dir, f"{job['id']}.attempts"), starts[job["id"]])
