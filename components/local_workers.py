"""Our worker processes of Beam's local runner, and how the fan-out's driver keeps them in hand.

Without a `--runner` option `components.fanout` runs Beam's FnApiRunner with worker processes
started by `worker_command`: they ignore Ctrl-C (it reaches the whole process group; only the
driver reports it) and register under `<work_dir>/.workers/<pid>` with an exclusive `flock` the
kernel releases however the process ends. The registry entry (JSON) names the job the worker
runs and marks a normal end, so the driver knows which workers live, which died and whose job
took a worker down (`died_workers`); it stops them (`stop_local_workers`, `stop_pipeline`) on
Ctrl-C or after a death, while Beam's threads in the driver are kept quiet (`REPORTS`): their
gRPC tracebacks would only follow the driver's own message. Each worker also claims a slot
(`claim_worker_slot`) that gives it its share of the cores and, with several GPUs, its own GPU.
"""

from __future__ import annotations

import fcntl
import json
import logging as std_logging
import os
import shlex
import signal
import sys
import threading
import time
import weakref
from typing import Any, Callable, Mapping

WORKERS_DIR = ".workers"
"""Where local worker processes register under a fan-out's `work_dir` (see `local_worker_main`)."""


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


def share_machine(parallelism: int, slot: int) -> None:
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


def worker_command(work_dir: str) -> str:
    """The shell command a local worker process starts with. `trap '' INT` before `exec`: Ctrl-C
    is ignored from the first instruction on (Python then installs no KeyboardInterrupt handler),
    so the worker prints no traceback; the driver reports the Ctrl-C and stops the workers."""
    code = "from components.local_workers import local_worker_main; local_worker_main()"
    return f"trap '' INT; exec {shlex.quote(sys.executable)} -c {shlex.quote(code)} {shlex.quote(work_dir)}"


_WORKER_LOCK: Any = None
"""This worker process's registry entry (an open, locked file), held for the life of the process."""


def local_worker_main() -> None:
    """A local Beam worker process: registers, then runs Beam's SDK harness until the driver is done.

    Registration is an exclusive `flock` on `<work_dir>/.workers/<pid>`, released by the kernel
    however the process ends, so the driver sees which workers live. The entry (JSON) names the
    job the worker runs (`execute_job`) and, once Beam's harness returned at the pipeline's end,
    says so: a worker whose lock is free without that mark died, and the driver knows which job
    took it down. A worker that registers after the driver began stopping them (the `stop` file)
    leaves at once. SIGTERM (the driver's stop) exits with status 0: Beam's thread that waits for
    the process would report any other status as a failure, with a traceback, in the driver.
    """
    global _WORKER_LOCK
    registry = os.path.join(sys.argv[1], WORKERS_DIR)
    os.makedirs(registry, exist_ok=True)
    _WORKER_LOCK = _register(registry)
    if os.path.exists(os.path.join(registry, "stop")):
        os._exit(0)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    # Every job imports TensorFlow: done now, its native start-up notes are left out of the
    # terminal (one set per worker per fan-out otherwise), as are Beam's start-up notes.
    from components.terminal import import_tensorflow_quietly, quiet_beam_worker

    quiet_beam_worker()
    try:
        import_tensorflow_quietly(list_devices=True)
    except ImportError:  # a job that needs TensorFlow will say so itself
        pass
    from apache_beam.runners.worker import sdk_worker_main

    sdk_worker_main.main(sys.argv)
    set_worker_entry({"exited": True})


def _register(registry: str) -> Any:
    """This process's registry entry, locked. It is locked and written under another name first,
    then renamed: the driver never sees an entry whose lock is not taken yet, which it would
    take for a dead worker's."""
    path = os.path.join(registry, str(os.getpid()))
    handle = open(path + ".new", "w")
    fcntl.flock(handle, fcntl.LOCK_EX)
    json.dump({"job": None}, handle)
    handle.flush()
    os.rename(path + ".new", path)
    return handle


def set_worker_entry(entry: Mapping[str, Any]) -> None:
    """Writes this process's registry entry; nothing outside a local worker process."""
    if _WORKER_LOCK is None:
        return
    _WORKER_LOCK.seek(0)
    json.dump(entry, _WORKER_LOCK)
    _WORKER_LOCK.truncate()
    _WORKER_LOCK.flush()


def _scan_workers(registry: str) -> tuple[list[int], list[dict[str, Any]]]:
    """Process ids of the registered workers still alive, and the last entries of those that
    ended since the last look (forgotten: each end is seen once)."""
    live, ended = [], []
    for name in os.listdir(registry) if os.path.isdir(registry) else ():
        if not name.isdigit():
            continue
        with open(os.path.join(registry, name)) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                live.append(int(name))
                continue
            ended.append(_read_entry(handle))
            os.remove(os.path.join(registry, name))
    return live, ended


def _read_entry(handle: Any) -> dict[str, Any]:
    try:
        return dict(json.loads(handle.read()))
    except ValueError:  # killed while rewriting it: no job to name
        return {}


def live_workers(registry: str) -> list[int]:
    """Process ids of the registered workers still alive; forgets the others."""
    return _scan_workers(registry)[0]


def died_workers(registry: str) -> list[str | None]:
    """The jobs (None: none) that the registered workers which died since the last look were
    running. A worker that ended with the pipeline marked its entry, and is not among them."""
    return [entry.get("job") for entry in _scan_workers(registry)[1] if not entry.get("exited")]


class WorkerDied(Exception):
    """A local worker process died while the Beam pipeline ran: FnApiRunner would wait for ever."""

    def __init__(self, jobs: list[str | None]):
        super().__init__(jobs)
        self.jobs = jobs


class _BeamThreadReports:
    """What Beam's threads in the driver report (uncaught exceptions, data-plane errors) while a
    pipeline with our worker processes runs: held back, then shown if the pipeline ended by itself
    and dropped if the driver abandoned it (a worker died, Ctrl-C). A worker process that dies or
    is stopped cuts its gRPC streams, and Beam's threads report that at once, with tracebacks,
    before the driver can tell why; the driver's own message says it better. The threads of an
    abandoned pipeline stay silent for good. A pipeline's threads: those started after it."""

    def __init__(self) -> None:
        self.earlier: set[threading.Thread] | None = None  # the driver's threads before the running pipeline
        self.held: list[Callable[[], None]] = []
        self.abandoned: "weakref.WeakSet[threading.Thread]" = weakref.WeakSet()

    def start(self) -> None:
        _install_report_hooks()
        self.earlier, self.held = set(threading.enumerate()), []

    def hold(self, thread: threading.Thread, report: Callable[[], None]) -> bool:
        """Whether `thread`'s report is held back (or dropped) instead of shown now."""
        if thread in self.abandoned:
            return True
        if self.earlier is None or thread in self.earlier:
            return False
        self.held.append(report)
        return True

    def release(self) -> None:
        """The pipeline ended by itself: shows what its threads reported."""
        held, self.earlier, self.held = self.held, None, []
        for report in held:
            report()

    def abandon(self) -> set[threading.Thread]:
        """The driver stops the pipeline: drops its threads' reports, now and later; returns them."""
        threads = set(threading.enumerate()) - (self.earlier or set())
        self.abandoned.update(threads)
        self.earlier, self.held = None, []
        return threads


REPORTS = _BeamThreadReports()
_previous_excepthook = threading.excepthook


def _install_report_hooks() -> None:
    global _previous_excepthook
    if threading.excepthook is not _excepthook:
        _previous_excepthook, threading.excepthook = threading.excepthook, _excepthook
    std_logging.getLogger("apache_beam.runners.worker.data_plane").addFilter(_log_filter)


def _excepthook(args: Any) -> None:
    if not REPORTS.hold(args.thread, lambda: _previous_excepthook(args)):
        _previous_excepthook(args)


def _log_filter(record: std_logging.LogRecord) -> bool:
    logger = std_logging.getLogger(record.name)
    return not REPORTS.hold(threading.current_thread(), lambda: logger.handle(record))


def clear_workers(work_dir: str) -> None:
    """A new fan-out: forget the `stop` of an earlier one (and its ended workers)."""
    registry = os.path.join(work_dir, WORKERS_DIR)
    os.makedirs(registry, exist_ok=True)
    if os.path.exists(os.path.join(registry, "stop")):
        os.remove(os.path.join(registry, "stop"))
    live_workers(registry)


def stop_local_workers(work_dir: str, grace_seconds: float = 5.0) -> None:
    """Stops every local worker process of the fan-out in `work_dir` and returns once none is left:
    SIGTERM first (a worker exits at once, quietly), SIGKILL for one still there after the grace."""
    registry = os.path.join(work_dir, WORKERS_DIR)
    os.makedirs(registry, exist_ok=True)
    open(os.path.join(registry, "stop"), "w").close()  # before the first look: no late worker is missed
    for sig in (signal.SIGTERM, signal.SIGKILL):
        live = live_workers(registry)
        for pid in live:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace_seconds
        while live and time.time() < deadline:
            time.sleep(0.05)
            live = live_workers(registry)
        if not live:
            return


def shielded(action: Callable[[], None]) -> None:
    """Runs `action` to its end even if Ctrl-C is pressed meanwhile (it starts over): stopping the
    workers half-way would leave them running after the driver. Such a Ctrl-C is raised after."""
    interrupted = False
    while True:
        try:
            action()
            break
        except KeyboardInterrupt:
            interrupted = True
    if interrupted:
        raise KeyboardInterrupt


def stop_pipeline(work_dir: str, threads: set[threading.Thread], wait_seconds: float = 30.0) -> None:
    """Stops the worker processes of the pipeline whose driver threads are `threads`, and returns
    once they ended, even those not registered yet (they see the `stop` file and leave): Beam's
    threads that wait for them do not end before, and they would keep the driver alive at exit;
    a worker still starting must not join the next pipeline's."""
    stop_local_workers(work_dir)
    deadline = time.time() + wait_seconds
    for thread in threads:
        if not thread.daemon:
            thread.join(timeout=max(0.0, deadline - time.time()))
