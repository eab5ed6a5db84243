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


def run_tuner(tmp_path, monkeypatch, job, max_trials=12, progress=None, **settings):
    """Runs the Tuner's executor on two seed candidates with `job` in place of training (no
    data is read); returns its SearchResults artifact."""
    from components import training_job
    from components.base import Artifact, ExecutorContext
    from components.tuner import TunerExecutor

    monkeypatch.setattr(training_job, "train_job", job)
    candidates = Artifact("Candidates", str(tmp_path / "candidates"))
    os.makedirs(candidates.uri, exist_ok=True)
    with open(candidates.path("candidates.jsonl"), "w") as f:
        f.write('{"expression": "relu(x)"}\n{"expression": "tanh(x)"}\n')
    out = Artifact("SearchResults", str(tmp_path / "search"))
    os.makedirs(out.uri, exist_ok=True)
    parameters = {"train_config": {}, "space": "pangaea", "strategy": "evolution", "max_trials": max_trials,
                  "population_size": 4, "tournament_size": 2, "train_examples": None, "parallel_trials": 1,
                  "beam_options": [], "top_k": 3, "seed": 0, **settings}
    executor = TunerExecutor(ExecutorContext(component_id="tuner", resume_dir=str(tmp_path / "resume"),
                                             on_progress=progress))
    executor.Do({"examples": [Artifact("Examples", str(tmp_path / "examples"))], "candidates": [candidates]},
                {"search_results": [out]}, parameters)
    return out
