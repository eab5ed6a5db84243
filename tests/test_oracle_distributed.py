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

FIRST_TRIAL_BARRIER = """
# KerasTuner's chief leaves once every worker it has heard from was told to stop, and it first hears
# from a worker at that worker's first trial request. Trials are quick, so a worker slow to start
# could find the chief gone. Each worker holds its first trial until the other has one as well.
_first_trial = [True]
def await_other_worker():
    if not _first_trial[0]:
        return
    _first_trial[0] = False
    open(os.path.join({barrier!r}, role), "w").close()
    deadline = time.time() + 60
    while len(os.listdir({barrier!r})) < 2 and time.time() < deadline:
        time.sleep(0.05)
"""

SCRIPT = """
import json, os, sys, time
sys.path.insert(0, {tests!r})
import keras_tuner
from test_oracle import CheapTuner, make_oracle, target_fitness
from activations.oracle import GENOME

role = os.environ["KERASTUNER_TUNER_ID"]

""" + FIRST_TRIAL_BARRIER + """
def fitness(text):
    await_other_worker()
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


def _run_chief_and_workers(tmp_path, script_text: str) -> None:
    """Runs `script_text` as KerasTuner's chief and two workers on loopback; all must exit 0."""
    port = _free_port()
    script = tmp_path / "tune.py"
    script.write_text(script_text)
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


def test_chief_and_two_workers_share_one_evolutionary_search(tmp_path):
    from activations.equivalence import fingerprint

    log, summary = tmp_path / "runs.jsonl", tmp_path / "summary.json"
    (tmp_path / "ready").mkdir()
    _run_chief_and_workers(tmp_path, SCRIPT.format(
        tests=str(PROJECT_ROOT / "tests"), log=str(log), summary=str(summary), barrier=str(tmp_path / "ready"),
        directory=str(tmp_path / "project"), max_trials=MAX_TRIALS))

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


STOPPING_SCRIPT = """
import json, math, os, sys, time, types
sys.path.insert(0, {tests!r})
import keras_tuner
from test_oracle import DEFAULT_SEEDS, target_fitness
from activations.oracle import GENOME, EvolutionaryTuner
from activations.stopping import QuantileStopping

role = os.environ["KERASTUNER_TUNER_ID"]

""" + FIRST_TRIAL_BARRIER + """
class EpochTuner(EvolutionaryTuner):
    # A trial of four epochs whose fitness climbs to the function's target fitness.
    def run_trial(self, trial, *args, **kwargs):
        await_other_worker()
        final = target_fitness(trial.hyperparameters.get(GENOME))
        final = final if math.isfinite(final) else 0.0
        model = types.SimpleNamespace(stop_training=False)
        for epoch in range(4):
            value = final * (epoch + 1) / 4
            self.on_epoch_end(trial, model, epoch, logs={{"fitness": value}})
            if model.stop_training:
                break
        with open({log!r}, "a") as handle:
            handle.write(json.dumps({{"trial": trial.trial_id, "epochs": epoch + 1}}) + "\\n")
        return {{"fitness": value}}

tuner = EpochTuner(objective=keras_tuner.Objective("fitness", "max"), max_trials={max_trials}, population_size=4,
                   tournament_size=2, seed=7, idle_sleep=0.05, seed_functions=DEFAULT_SEEDS[:3],
                   stopping=QuantileStopping(quantile=0.5, grace_epochs=1, min_trials=4),
                   directory={directory!r}, project_name="dist", overwrite=role == "chief")
tuner.search(verbose=0)
if role == "chief":
    with open({summary!r}, "w") as handle:
        json.dump({{tid: tuner.oracle.lineage(tid).get("stopped_at") for tid in tuner.oracle.trials}}, handle)
"""


def test_workers_stop_hopeless_trials_on_the_chiefs_word(tmp_path):
    log, summary = tmp_path / "epochs.jsonl", tmp_path / "stopped.json"
    (tmp_path / "ready").mkdir()
    _run_chief_and_workers(tmp_path, STOPPING_SCRIPT.format(
        tests=str(PROJECT_ROOT / "tests"), log=str(log), summary=str(summary), barrier=str(tmp_path / "ready"),
        directory=str(tmp_path / "project"), max_trials=MAX_TRIALS))
    trained = {run["trial"]: run["epochs"] for run in map(json.loads, log.read_text().splitlines())}
    stopped_at = json.loads(summary.read_text())
    assert set(trained) == set(stopped_at) and len(trained) == MAX_TRIALS
    stopped = {tid: epochs for tid, epochs in trained.items() if epochs < 4}
    assert stopped, "no trial was stopped: the workers did not hear from the chief's rule"
    # The chief recorded each stop at the epoch where the worker's fit stopped, and no other.
    assert {tid: at for tid, at in stopped_at.items() if at} == stopped
