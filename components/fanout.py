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

Without a `--runner` option the worker processes are ours (Beam's FnApiRunner): `parallelism`
alone sets how many there are, so `beam_options` that would change it are refused
(`check_beam_options`). They ignore Ctrl-C, which reaches the whole process group, so that only
the driver reports it: the driver then stops them, waits until none is left, and takes back the
starts of the jobs they were running (`_stop_local_workers`, `_take_back_starts`).
"""

from __future__ import annotations

import fcntl
import importlib
import json
import logging as std_logging
import os
import shlex
import signal
import sys
import threading
import time
import traceback
import weakref
from typing import Any, Callable, Mapping, Sequence

from absl import logging

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

WORKERS_DIR = ".workers"
"""Where local worker processes register under a fan-out's `work_dir` (see `local_worker_main`)."""


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


_WORKER_SLOT: tuple[int, Any] | None = None
"""(slot, open lock file) of this worker process, held for the life of the process."""


def claim_worker_slot(work_dir: str, parallelism: int) -> int:
    """A worker index in [0, parallelism) that no other live worker of this fan-out holds.

    Each slot is an exclusive `flock` on `<work_dir>/.worker-slot-<k>`, kept until the process
    exits (the kernel releases it even after a crash), so Beam's worker processes number
    themselves 0..parallelism-1 without talking to each other.
    """
    global _WORKER_SLOT
    if _WORKER_SLOT is None:
        for slot in range(parallelism):
            handle = open(os.path.join(work_dir, f".worker-slot-{slot}"), "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            _WORKER_SLOT = (slot, handle)
            break
        else:  # more workers than slots (a runner that ignores direct_num_workers)
            return os.getpid() % parallelism
    return _WORKER_SLOT[0]


def _share_machine(parallelism: int, slot: int) -> None:
    """Give one of `parallelism` workers its share of the machine: cores // parallelism
    threads, and on a machine with GPUs GPU number `slot` (round robin) when there are several,
    with memory growth so workers sharing one GPU do not each reserve all of its memory."""
    cores = os.cpu_count() or 1
    per_worker = max(1, cores // max(1, parallelism))
    try:
        import tensorflow as tf
    except ImportError:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(per_worker)
        tf.config.threading.set_inter_op_parallelism_threads(per_worker)
        gpus = tf.config.list_physical_devices("GPU")
        if len(gpus) > 1:
            tf.config.set_visible_devices(gpus[slot % len(gpus)], "GPU")
            gpus = [gpus[slot % len(gpus)]]
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:  # TensorFlow already initialised in this process: keep its setting
        pass


def execute_job(job: Mapping[str, Any], work_dir: str, parallelism: int = 1) -> dict[str, Any]:
    """Runs one job and writes its result file (atomically); returns the result."""
    started = attempts(work_dir, job["id"])
    _write_json(os.path.join(work_dir, f"{job['id']}.attempts"), started + 1)
    slot = None
    if parallelism > 1:
        slot = claim_worker_slot(work_dir, parallelism)
        _share_machine(parallelism, slot)
    start = time.time()
    try:
        result = dict(_resolve(job["fn"])(**job.get("args", {})))
    except KeyboardInterrupt:  # the user stopped the run: not one of the job's starts
        _write_json(os.path.join(work_dir, f"{job['id']}.attempts"), started)
        raise
    except Exception as error:  # noqa: BLE001 - a job failure is data, not a crash
        logging.warning("job %s failed: %s", job["id"], error)
        result = {"failed": True, "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    result.setdefault("job_id", job["id"])
    result.setdefault("worker_slot", slot)
    result.setdefault("job_seconds", time.time() - start)
    _write_json(_result_path(work_dir, job["id"]), result)
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


def check_beam_options(beam_options: Sequence[str]) -> None:
    """Raises ValueError for a setting of the local runner's workers when no `--runner` is named:
    `parallelism` alone decides them there (see `LOCAL_RUNNER_SETTINGS`). `beam_options` are
    outside the cache key, so one that changed results would make cached results disagree."""
    if names_runner(beam_options):
        return
    for item in beam_options:
        reason = LOCAL_RUNNER_SETTINGS.get(_option_name(item))
        if reason:
            raise ValueError(f"beam_options: {item!r} is not allowed without a --runner option: {reason}")


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
        environment = SubprocessSDKEnvironment.from_command_string(_local_worker_command(work_dir))
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


def _local_worker_command(work_dir: str) -> str:
    """The shell command a local worker process starts with. `trap '' INT` before `exec`: Ctrl-C
    is ignored from the first instruction on (Python then installs no KeyboardInterrupt handler),
    so the worker prints no traceback; the driver reports the Ctrl-C and stops the workers."""
    code = "from components.fanout import local_worker_main; local_worker_main()"
    return f"trap '' INT; exec {shlex.quote(sys.executable)} -c {shlex.quote(code)} {shlex.quote(work_dir)}"


_WORKER_LOCK: Any = None
"""This worker process's registration (an open, locked file), held for the life of the process."""


def local_worker_main() -> None:
    """A local Beam worker process: registers, then runs Beam's SDK harness until the driver is done.

    Registration is an exclusive `flock` on `<work_dir>/.workers/<pid>`, released by the kernel
    however the process ends, so the driver sees which workers live. A worker that registers
    after the driver began stopping them (the `stop` file) leaves at once. SIGTERM (the driver's
    stop) exits with status 0: Beam's thread that waits for the process would report any other
    status as a failure, with a traceback, in the driver.
    """
    global _WORKER_LOCK
    registry = os.path.join(sys.argv[1], WORKERS_DIR)
    os.makedirs(registry, exist_ok=True)
    _WORKER_LOCK = open(os.path.join(registry, str(os.getpid())), "w")
    fcntl.flock(_WORKER_LOCK, fcntl.LOCK_EX)
    if os.path.exists(os.path.join(registry, "stop")):
        os._exit(0)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    from apache_beam.runners.worker import sdk_worker_main

    sdk_worker_main.main(sys.argv)


def _live_workers(registry: str) -> list[int]:
    """Process ids of the registered workers still alive; forgets the others."""
    live = []
    for name in os.listdir(registry) if os.path.isdir(registry) else ():
        if not name.isdigit():
            continue
        with open(os.path.join(registry, name)) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                live.append(int(name))
                continue
            os.remove(os.path.join(registry, name))
    return live


_ABANDONED: "weakref.WeakSet[threading.Thread]" = weakref.WeakSet()
"""Threads of Beam pipelines the driver stopped (see `_abandon`)."""
_previous_excepthook = threading.excepthook


def _abandon(threads: set[threading.Thread]) -> None:
    """Silences `threads`, those of a Beam pipeline the driver is stopping: Beam's threads in the
    driver report the end of each worker's connection with a traceback (gRPC errors), which would
    follow the driver's own message about the Ctrl-C. Their errors say nothing new."""
    global _previous_excepthook
    _ABANDONED.update(threads)
    if threading.excepthook is not _quiet_abandoned:
        _previous_excepthook, threading.excepthook = threading.excepthook, _quiet_abandoned
    std_logging.getLogger("apache_beam.runners.worker.data_plane").addFilter(_not_from_abandoned)


def _quiet_abandoned(args: Any) -> None:
    if args.thread not in _ABANDONED:
        _previous_excepthook(args)


def _not_from_abandoned(record: std_logging.LogRecord) -> bool:
    return threading.current_thread() not in _ABANDONED


def _clear_workers(work_dir: str) -> None:
    """A new fan-out: forget the `stop` of an earlier one (and its ended workers)."""
    registry = os.path.join(work_dir, WORKERS_DIR)
    os.makedirs(registry, exist_ok=True)
    if os.path.exists(os.path.join(registry, "stop")):
        os.remove(os.path.join(registry, "stop"))
    _live_workers(registry)


def _stop_local_workers(work_dir: str, grace_seconds: float = 5.0) -> None:
    """Stops every local worker process of the fan-out in `work_dir` and returns once none is left:
    SIGTERM first (a worker exits at once, quietly), SIGKILL for one still there after the grace."""
    registry = os.path.join(work_dir, WORKERS_DIR)
    os.makedirs(registry, exist_ok=True)
    open(os.path.join(registry, "stop"), "w").close()  # before the first look: no late worker is missed
    for sig in (signal.SIGTERM, signal.SIGKILL):
        live = _live_workers(registry)
        for pid in live:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace_seconds
        while live and time.time() < deadline:
            time.sleep(0.05)
            live = _live_workers(registry)
        if not live:
            return


def _shielded(action: Callable[[], None]) -> None:
    """Runs `action` to its end even if Ctrl-C is pressed again meanwhile (it starts over):
    stopping the workers half-way would leave them running after the driver."""
    while True:
        try:
            return action()
        except KeyboardInterrupt:
            continue


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
        _write_json(_result_path(work_dir, job_id), {
            "failed": True, "job_id": job_id,
            "error": f"started {started} times and never finished: its process was killed or crashed "
                     "(out of memory?)"})
        return False
    return result is None or (bool(result.get("failed")) and started < MAX_ATTEMPTS)


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
        pending = [job for job in jobs if _needs_run(work_dir, job["id"])]
        if not pending:
            break
        if progress and attempt == 0 and len(pending) < len(jobs):
            progress(len(jobs) - len(pending), len(jobs), None)  # what an earlier run finished
        _run_pending(jobs, pending, work_dir, parallelism, beam_options, progress, poll_seconds)
    results = [load_result(work_dir, job_id) for job_id in ids]
    missing = [job_id for job_id, result in zip(ids, results) if result is None]
    if missing:
        raise FanoutError(f"jobs {missing} produced no result")
    return results


def _run_pending(jobs, pending, work_dir: str, parallelism: int, beam_options: Sequence[str],
                 progress: ProgressFn | None, poll_seconds: float) -> None:
    total, done = len(jobs), len(jobs) - len(pending)
    if parallelism == 1 and not beam_options:
        for job in pending:
            result = execute_job(job, work_dir)
            done += 1
            if progress:
                progress(done, total, result)
        return
    errors: list[BaseException] = []
    before = {job["id"]: load_result(work_dir, job["id"]) for job in pending}  # a failure being retried
    starts = {job["id"]: attempts(work_dir, job["id"]) for job in pending}
    local = not names_runner(beam_options)  # Beam's FnApiRunner in this process
    workers = local and parallelism > 1  # ... with worker processes of ours
    if workers:
        _clear_workers(work_dir)

    def target():
        try:
            _run_beam(pending, work_dir, parallelism, beam_options)
        except BaseException as error:  # noqa: BLE001 - re-raised in the driver thread
            errors.append(error)

    thread = threading.Thread(target=target, name="beam-fanout", daemon=True)
    earlier = set(threading.enumerate())
    try:
        thread.start()
        _follow(thread, pending, work_dir, before, done, total, progress, poll_seconds)
    except BaseException:  # Ctrl-C above all: the driver stops what it started, then reports
        if workers:
            _abandon(set(threading.enumerate()) - earlier)
            _shielded(lambda: _stop_local_workers(work_dir))
        if local:
            _shielded(lambda: _take_back_starts(work_dir, pending, before, starts))
        raise
    if errors:
        raise FanoutError(f"the Beam fan-out failed: {errors[0]}") from errors[0]


def _follow(thread: threading.Thread, pending, work_dir: str, before: Mapping[str, Any], done: int, total: int,
            progress: ProgressFn | None, poll_seconds: float) -> None:
    """Reports each job's new result as it appears, until the Beam pipeline's thread ends."""
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


def _take_back_starts(work_dir: str, pending, before: Mapping[str, Any], starts: Mapping[str, int]) -> None:
    """The jobs the driver stopped (no new result) get back the start they were counted: they did
    not take their process down, the user stopped the run (as `execute_job` does in-process).
    Called once no worker process is left, so none can start a job behind it."""
    for job in pending:
        if load_result(work_dir, job["id"]) == before[job["id"]] and attempts(work_dir, job["id"]) != starts[job["id"]]:
            _write_json(os.path.join(work_dir, f"{job['id']}.attempts"), starts[job["id"]])
