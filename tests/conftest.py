"""Shared test set-up: quiet TensorFlow, CPU only, and paths to the data at hand."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
CIFAR_ARCHIVE = SHARED_DATA / "cifar10-jpeg-train.tar.gz"


@pytest.fixture
def cifar_archive():
    """The CIFAR-10 JPEG archive beside the project; skips the test when it is absent."""
    if not CIFAR_ARCHIVE.exists():
        pytest.skip(f"CIFAR-10 JPEG archive not found at {CIFAR_ARCHIVE}")
    return CIFAR_ARCHIVE


def run_and_signal(command: list[str], marker: pathlib.Path, signum: int, env: dict, cwd,
                   timeout: float = 120) -> tuple[int, str, str]:
    """Starts `command`, waits until it creates `marker` (it reached the point under test),
    sends it `signum`, and returns (exit code, stdout, stderr)."""
    import subprocess
    import time

    proc = subprocess.Popen(command, cwd=cwd, text=True, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc.returncode, out, err
