"""What the terminal is spared: notes every process of a run would print, none of them news.

TensorFlow's C++ libraries log a few lines on every import, whatever TF_CPP_MIN_LOG_LEVEL says
(they log before their logging is set up). On a machine without a GPU they are notes, not
problems, and a run that starts a process per step or per worker would print them dozens of
times. The CLI leaves them out of its own import and of the steps' output it relays. Two Python
warnings are dropped where they are logged (`quiet_known_warnings`). Every other line shows.
"""

from __future__ import annotations

import logging

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
    and Beam's, on import, that BigQuery's client is missing (nothing here uses BigQuery)."""
    logging.getLogger("tensorflow").addFilter(
        lambda record: "triggered tf.function retracing" not in record.getMessage())
    logging.getLogger().addFilter(lambda record: "apitools not found" not in record.getMessage())
