"""EvolutionaryOracle under KerasTuner's distributed mode: a chief and two workers on loopback."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[1]
MAX_TRIALS = 12

SCRIPT = """
import json, os, sys, time
sys.path.insert(0, {tests!r})
import keras_tuner
from test_oracle import CheapTuner, make_oracle, target_fitness
from activations.oracle import GENOME

role = os.environ["KERASTUNER_TUNER_ID"]

def fitness(text):
    with open({log!r}, "a") as handle:
        handle.write(json.dumps({{"tuner": role, "activation": text, "pid": os.getpid(), "time": time.time()}}) + "\\n")
    time.sleep(0.1)  # a trial takes a while, so both workers get some
    return target_fitness(text)

oracle = make_oracle(max_trials={max_trials}, population_size=4, idle_sleep=0.05)
tuner = CheapTuner(oracle=oracle, fitness=fitness, directory={directory!r}, project_name="dist",
                   overwrite=role == "chief")
tuner.search(verbose=0)
if role == "chief":
    summary = {{
        tid: {{"status": t.status, "activation": t.hyperparameters.get(GENOME), "score": t.score}}
        for tid, t in tuner.oracle.trials.items()
    }}
    with open({summary!r}, "w") as handle:
        json.dump({{"trials": summary, "counts": tuner.oracle.counts(), "history": tuner.oracle.history()}}, handle)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_chief_and_two_workers_share_one_evolutionary_search(tmp_path):
    from activations.equivalence import fingerprint

    port = _free_port()
    log, summary = tmp_path / "runs.jsonl", tmp_path / "summary.json"
    script = tmp_path / "tune.py"
    script.write_text(
        SCRIPT.format(
            tests=str(PROJECT_ROOT / "tests"),
            log=str(log),
            summary=str(summary),
            directory=str(tmp_path / "project"),
            max_trials=MAX_TRIALS,
        )
    )
    base_env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    base_env.update(
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=str(PROJECT_ROOT),
        KERASTUNER_ORACLE_IP="127.0.0.1",
        KERASTUNER_ORACLE_PORT=str(port),
        no_proxy="127.0.0.1,localhost",
    )
    processes = {}
    try:
        processes["chief"] = subprocess.Popen(
            [sys.executable, str(script)], env=dict(base_env, KERASTUNER_TUNER_ID="chief"), cwd=PROJECT_ROOT
        )
        # Workers start at once (their gRPC calls wait for the chief): imports overlap.
        for worker in ("tuner0", "tuner1"):
            processes[worker] = subprocess.Popen(
                [sys.executable, str(script)], env=dict(base_env, KERASTUNER_TUNER_ID=worker), cwd=PROJECT_ROOT
            )
        deadline = time.monotonic() + 120
        for name, process in processes.items():
            remaining = max(1.0, deadline - time.monotonic())
            assert process.wait(timeout=remaining) == 0, f"{name} exited with {process.returncode}"
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()

    result = json.loads(summary.read_text())
    trials = result["trials"]
    assert len(trials) == MAX_TRIALS
    assert all(trial["status"] == "COMPLETED" for trial in trials.values())
    runs = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(runs) == MAX_TRIALS, "every trial trained exactly once"
    assert {run["tuner"] for run in runs} == {"tuner0", "tuner1"}, "both workers trained"
    fingerprints = [fingerprint(run["activation"]) for run in runs]
    assert len(set(fingerprints)) == MAX_TRIALS, "no function trained twice"
    assert sorted(run["activation"] for run in runs) == sorted(t["activation"] for t in trials.values())
    assert result["counts"]["completed"] == MAX_TRIALS and result["counts"]["running"] == 0
    assert sum(row["proposed"] for row in result["history"]) == MAX_TRIALS
    assert any(t["activation"] not in ("relu(x)", "swish(x)", "gelu(x)") for t in trials.values())
