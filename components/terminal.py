"""What the terminal is spared: notes every process of a run would print, none of them news.

TensorFlow's C++ libraries log a few lines on every import, whatever TF_CPP_MIN_LOG_LEVEL says
(they log before their logging is set up). On a machine without a GPU they are notes, not
problems, and a run that starts a process per step or per worker would print them dozens of
times. The CLI leaves them out of its own import and of the steps' output it relays. Two Python
warnings are dropped where they are logged (`quiet_known_warnings`). Every other line shows.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile

STARTUP_NOISE = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on",
    "Could not find cuda drivers on your machine",
    "failed call to cuInit",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions",
)


def is_startup_noise(line: str) -> bool:
    """True for one of TensorFlow's native start-up notes."""
    return any(note in line for note in STARTUP_NOISE)


def quiet_known_warnings() -> None:
    """Drops two warnings that say nothing about a run, in this process: TensorFlow's
    "triggered tf.function retracing" (every trial builds a new model, so it fires on schedule)
    and Beam's, on import, that BigQuery's client is missing (nothing here uses BigQuery). Also
    Beam's own log of an exception in a step's pipeline (a traceback printed before the step
    fails): the failure itself reaches the user as the step's one-line error, with the
    traceback under --verbosity, which leaves all of this in place."""
    logging.getLogger("tensorflow").addFilter(
        lambda record: "triggered tf.function retracing" not in record.getMessage())
    logging.getLogger().addFilter(lambda record: "apitools not found" not in record.getMessage())
    logging.getLogger("apache_beam.runners.worker.bundle_processor").setLevel(logging.CRITICAL)


BEAM_WORKER_NOTES = {
    # logger: messages a local Beam worker process logs on every start, none of them a problem
    "apache_beam.runners.worker.sdk_worker_main": ("Logging handler created", "No semi_persistent_directory found"),
    # the driver's options for its own runner, which the worker's Python SDK does not know
    "apache_beam.options.pipeline_options": ("Discarding unparseable args",),
}


def quiet_beam_worker() -> None:
    """In a local Beam worker process: drops the notes above (the driver would also relay the
    warnings among them, once per worker) and the warnings `quiet_known_warnings` drops."""
    quiet_known_warnings()
    for name, notes in BEAM_WORKER_NOTES.items():
        logging.getLogger(name).addFilter(
            lambda record, notes=notes: not record.getMessage().startswith(notes))


def import_tensorflow_quietly(list_devices: bool = False) -> None:
    """Imports TensorFlow with its native start-up notes left out of the terminal; with
    `list_devices`, also looks for GPUs (which prints the CUDA notes of a machine without one).

    The process's stderr (file descriptor 2, where the C++ libraries write) goes to a temporary
    file during the import; afterwards every line that is not a known note is written back, so
    real warnings and errors still show, and all of it when the import fails.
    """
    if "tensorflow" in sys.modules and not list_devices:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        failed = True
        try:
            import tensorflow

            if list_devices:
                tensorflow.config.list_physical_devices("GPU")
            failed = False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            kept = lines if failed else [line for line in lines if not is_startup_noise(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()
