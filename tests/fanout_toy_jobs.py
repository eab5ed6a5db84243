"""Job functions for the fan-out tests; importable by Beam worker processes."""

import os
import signal
import time


def square(value: int, sleep: float = 0.0, wait_for: str | None = None) -> dict:
    """`wait_for`: a file to wait for first (another job's result), so that the job is still
    running whenever that other job ends its pipeline."""
    while wait_for and not os.path.exists(wait_for):
        time.sleep(0.05)
    time.sleep(sleep)
    if value < 0:
        raise ValueError(f"negative input {value}")
    return {"value": value * value, "pid": os.getpid()}


def crash() -> dict:
    """Takes its own process down, as an out-of-memory kill or a segfault in TensorFlow would."""
    os.kill(os.getpid(), signal.SIGKILL)
    return {}
