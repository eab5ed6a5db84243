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
