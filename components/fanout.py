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
"""

from __future__ import annotations

import fcntl
import importlib
import json
import os
import threading
import time
import traceback
from typing import Any, Callable, Mapping, Sequence

from absl import logging

ProgressFn = Callable[[int, int, Mapping[str, Any] | None], None]

MAX_ATTEMPTS = 2
"""Starts of a job that raised: once, and once more (a transient error should not decide)."""
MAX_STARTS_WITHOUT_RESULT = 3
"""Starts of a job that never wrote a result (its process died) before it is recorded as failed."""


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


def beam_pipeline(beam_options: Sequence[str] = (), parallelism: int = 1):
    """A `beam.Pipeline` for `beam_options`; without a `--runner` option, Beam's local
    FnApiRunner, in multi-processing mode with `parallelism` worker processes when above 1.

    The local runner is named directly because Beam's `DirectRunner` first tries its Prism
    runner, which downloads a binary from GitHub on first use: on a machine without internet
    that costs a failed download (or a long hang) before it falls back to the same FnApiRunner.
    """
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    options = list(beam_options)
    if any(opt.startswith("--runner") for opt in options):
        return beam.Pipeline(options=PipelineOptions(options))
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner, fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    if parallelism > 1:
        # Worker processes log every gRPC hand-shake at INFO; their warnings and errors still show.
        options += ["--direct_running_mode=multi_processing", f"--direct_num_workers={parallelism}",
                    "--default_sdk_harness_log_level=WARNING"]
    options = PipelineOptions(options)
    # The worker processes read their options from the provision info (as under DirectRunner).
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    provision = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return beam.Pipeline(runner=FnApiRunner(provision_info=provision), options=options)


def _run_beam(jobs: Sequence[Mapping[str, Any]], work_dir: str, parallelism: int, beam_options: Sequence[str]) -> None:
    import apache_beam as beam

    payload = [json.dumps(job) for job in jobs]
    with beam_pipeline(beam_options, parallelism) as pipeline:
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

    def target():
        try:
            _run_beam(pending, work_dir, parallelism, beam_options)
        except BaseException as error:  # noqa: BLE001 - re-raised in the driver thread
            errors.append(error)

    thread = threading.Thread(target=target, name="beam-fanout", daemon=True)
    thread.start()
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
            break
    if errors:
        raise FanoutError(f"the Beam fan-out failed: {errors[0]}") from errors[0]
