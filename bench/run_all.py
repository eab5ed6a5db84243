"""Runs every benchmark in bench/ and writes their tables to bench/results.md.

Each benchmark measures its ratios side by side within its own run and prints markdown; this
script runs them one after another (never two at once: they would share the cores), collects what
they print and records the machine, the versions and the commit they ran on.

    python bench/run_all.py            # the full suite (about an hour on 2 cores)
    python bench/run_all.py --quick    # every benchmark in its quick mode (a few minutes)
    python bench/run_all.py --only parallel_trials,search_efficiency   # updates just those sections

Each section records the date and commit it was measured at, so a results.md updated section by
section (`--only`) says where each table comes from.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

RETRACING_WARNING = "triggered tf.function retracing"
CIFAR_FOLDER = ".cache/cifar10/train"
CIFAR_ARCHIVE = os.path.join(os.path.dirname(ROOT), "shared", "data", "cifar10-jpeg-train.tar.gz")

#: name -> (script, what it measures, arguments, arguments in quick mode)
BENCHMARKS: dict[str, tuple[str, str, list[str], list[str]]] = {
    "activation_overhead": ("activation_overhead", "Activation overhead: training throughput of a small conv "
                            "net per activation, as a ratio to built-in ReLU", [], ["--quick"]),
    "activation_overhead_wide": ("activation_overhead", "Activation overhead with 512-bit XLA vectors "
                                 "(`activations.layer.prefer_wide_vectors()`)", ["--wide-vectors"],
                                 ["--quick", "--wide-vectors"]),
    "operator_cost": ("operator_cost", "Operator cost: fused-kernel forward and backward time per unary "
                      "operator, as a ratio to relu(x)", [], ["--quick"]),
    "row_layout": ("row_layout", "Row layout: ResNet-20 with the fused kernels on channel-vector rows "
                   "against wide rows", [], ["--quick"]),
    "training_speed": ("training_speed", "Training speed per precision: ResNet-20 images/s, as a ratio to "
                       "float32 + ReLU", [], ["--quick"]),
    "parallel_trials": ("parallel_trials", "Parallel trials, demo-sized: small CNN trials on the digits",
                        [], ["--quick"]),
    "parallel_trials_cifar": ("parallel_trials", "Parallel trials, CIFAR-sized: ResNet-20 trials on CIFAR-10 "
                              "images", ["--model", "resnet20", "--data", f"folder:{CIFAR_FOLDER}", "--max_examples",
                                         "3000", "--trials", "4", "--epochs", "2", "--rounds", "2"],
                              ["--quick", "--model", "resnet20", "--data", f"folder:{CIFAR_FOLDER}",
                               "--max_examples", "1000", "--epochs", "1"]),
    "early_stopping": ("early_stopping", "Early stopping: what stopping hopeless search trials saves, and the best "
                       "accuracy the search finds with and without it", [], ["--quick"]),
    "early_stopping_cifar": ("early_stopping", "Early stopping, CIFAR-sized: ResNet-20 trials on CIFAR-10 images",
                             ["--preset", "cifar10", "--data", f"folder:{CIFAR_FOLDER}", "--max_examples", "3000",
                              "--trials", "16", "--epochs", "4", "--seeds", "1"],
                             ["--quick", "--preset", "cifar10", "--data", f"folder:{CIFAR_FOLDER}",
                              "--max_examples", "1000", "--epochs", "2"]),
    "search_efficiency": ("search_efficiency", "Search efficiency: evolution and the RL controller against random "
                          "search and a fixed list at the same trial budget; offspring the fingerprint cache and "
                          "the sanity check saved from training", [], ["--seeds", "3", "--trials", "40"]),
}


def missing_data(arguments: list[str]) -> str | None:
    """Why a benchmark cannot run here (None if it can): extracts the CIFAR-10 archive beside
    the project into .cache/ the first time a benchmark asks for its folder."""
    if f"folder:{CIFAR_FOLDER}" not in arguments or os.path.isdir(os.path.join(ROOT, CIFAR_FOLDER)):
        return None
    if not os.path.exists(CIFAR_ARCHIVE):
        return f"skipped: neither {CIFAR_FOLDER} nor the archive {CIFAR_ARCHIVE} is here"
    import tarfile

    print(f"extracting {CIFAR_ARCHIVE} into .cache/cifar10 ...", flush=True)
    with tarfile.open(CIFAR_ARCHIVE) as archive:
        archive.extractall(os.path.join(ROOT, ".cache", "cifar10"), filter="data")
    return None


def machine() -> str:
    from components.terminal import import_tensorflow_quietly

    import_tensorflow_quietly(list_devices=True)
    import tensorflow as tf

    from trainer.precision import cpu_supports_bf16

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, bf16 CPU: "
            f"{cpu_supports_bf16()}, GPUs: {len(tf.config.list_physical_devices('GPU'))}; Python "
            f"{platform.python_version()}, TensorFlow {tf.__version__}")


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run(script: str, arguments: list[str]) -> tuple[int, str, float]:
    """(exit code, the tables the benchmark printed, seconds). Benchmarks print their tables to
    stdout (echoed here too) and their progress to stderr, which is relayed to the terminal
    without TensorFlow's start-up notes and retracing warnings (each benchmark builds many
    models in one process, so those fire on schedule and say nothing)."""
    from components.terminal import is_startup_noise

    def relay_progress(stream) -> None:
        for line in stream:
            if not (is_startup_noise(line) or RETRACING_WARNING in line):
                sys.stderr.write(line)
                sys.stderr.flush()

    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, os.path.join(HERE, f"{script}.py"), *arguments], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    progress = threading.Thread(target=relay_progress, args=(process.stderr,), daemon=True)
    progress.start()
    lines = []
    for line in process.stdout:
        print(f"  [{script}] {line}", end="", flush=True)
        lines.append(line)
    code = process.wait()
    progress.join()
    return code, "".join(lines), time.perf_counter() - start


def as_section(output: str) -> str:
    """A benchmark's output under a results.md section: its own top heading demoted."""
    return re.sub(r"^# ", "### ", output.strip(), flags=re.MULTILINE)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="each benchmark in its quick mode")
    parser.add_argument("--only", default="", help="comma-separated benchmark names (default: all)")
    parser.add_argument("--output", default=os.path.join(HERE, "results.md"))
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {sorted(BENCHMARKS)}")

    sys.path.insert(0, ROOT)
    stamp = f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, commit {commit()}"
    mode = "quick mode" if args.quick else "full mode"
    header = (
        "# Benchmark results\n\n"
        f"Machine: {machine()}.\n\nEvery ratio is measured side by side within one run of its benchmark; "
        "each section says when, at which commit and in which mode it ran (`python bench/run_all.py`)."
    )
    fresh: dict[str, str] = {}
    failures = []
    for name in names:
        script, title, arguments, quick = BENCHMARKS[name]
        print(f"== {name} ==", flush=True)
        chosen = quick if args.quick else arguments
        command = " ".join(["python", f"bench/{script}.py", *chosen])
        reason = missing_data(chosen)
        if reason:
            fresh[title] = f"`{command}`: {reason} ({stamp})."
            continue
        code, output, seconds = run(script, chosen)
        body = f"`{command}` took {seconds / 60:.1f} min ({stamp}, {mode}).\n"
        if code != 0:
            failures.append(name)
            body += f"\n**Failed with exit code {code}.** Last output:\n\n```\n{output[-2000:]}\n```"
        else:
            body += "\n" + as_section(output)
        fresh[title] = body
    previous = {}
    if args.only and os.path.exists(args.output):
        with open(args.output) as f:
            previous = sections_of(f.read())
    with open(args.output, "w") as f:
        f.write(render(header, previous, fresh, [BENCHMARKS[n][1] for n in BENCHMARKS]))
    print(f"\nwrote {args.output}" + (f"; failed: {failures}" if failures else ""))
    return 1 if failures else 0


def sections_of(text: str) -> dict[str, str]:
    """The `## title` sections of a results file: title -> body (without the heading)."""
    sections = {}
    for chunk in text.split("\n## ")[1:]:
        title, _, body = chunk.partition("\n")
        sections[title.strip()] = body.strip("\n")
    return sections


def render(header: str, previous: dict[str, str], fresh: dict[str, str], order: list[str]) -> str:
    """Fresh sections replace previous ones of the same title; benchmark order, then the rest."""
    merged = {**previous, **fresh}
    titles = [t for t in order if t in merged] + [t for t in merged if t not in order]
    return header + "".join(f"\n\n## {t}\n\n{merged[t]}" for t in titles) + "\n"


if __name__ == "__main__":
    sys.exit(main())
