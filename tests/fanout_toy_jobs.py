"""Job functions for the fan-out tests; importable by Beam worker processes."""

import os
import time


def square(value: int, sleep: float = 0.0) -> dict:
    time.sleep(sleep)
    if value < 0:
        raise ValueError(f"negative input {value}")
    return {"value": value * value, "pid": os.getpid()}
