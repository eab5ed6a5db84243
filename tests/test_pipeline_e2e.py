"""The whole product on a tiny budget: `actsearch run` end to end, cache, resume after a kill,
the CLI's errors, the exported function, the report's TensorBoard logs, and the same DAG
compiled for Kubeflow and run through `kfp.local`.

Every run uses the embedded digits, an MLP, a handful of one-epoch trials and two final seeds,
so the module takes a few minutes on two cores; the behaviour under test is the same as at
full size.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from components.report import function_label
from conftest import PROJECT_ROOT
from pipeline import config as config_lib

TINY = [
    "--data=embedded:digits", "--max_examples=600", "--model=mlp", "--batch_size=64",
    "--seed_functions=relu,swish", "--num_candidates=1", "--max_trials=4", "--population_size=2",
    "--tournament_size=1", "--trial_epochs=1", "--final_epochs=2", "--seeds=2", "--top_k=1",
    "--baselines=relu", "--precision=float32",
]
COMPONENTS = ["example_gen", "candidate_gen", "tuner", "trainer", "evaluator", "exporter", "reporter"]


def actsearch(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs the CLI in a fresh process, as a user does."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        pytest.fail(f"actsearch {' '.join(args)} exited with {done.returncode}:\n"
                    f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    return done


def read_json(path) -> dict:
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One complete run with two parallel trials through Beam; then the same command again."""
    root = tmp_path_factory.mktemp("e2e") / "root"
    first = actsearch("run", *TINY, "--parallel_trials=2", f"--pipeline_root={root}", "--run_id=first")
    second = actsearch("run", *TINY, "--parallel_trials=2", f"--pipeline_root={root}", "--run_id=second")
    return root, first, second


def test_a_run_produces_every_deliverable(finished):
    root, first, _ = finished
    run = read_json(root / "run.json")
    assert run["status"] == "complete"
    results = run["results"]
    for key in ("report", "report_markdown", "exported_activation", "exported_model", "evaluation",
                "tensorboard"):
        assert os.path.exists(results[key]), key
    # The CLI tells the user where everything is, and how to open TensorBoard.
    assert f"report:       {root / 'report' / 'report.html'}" in first.stdout
    assert f"tensorboard --logdir {root / 'tensorboard'}" in first.stdout
    # One progress line per trial, naming the trial by its id (as trials.jsonl and the report do),
    # then how many of the 4 have finished.
    progress = re.findall(r"\[tuner\] trial (\S+) \((\d) of 4\) \[[^]]+\] (.+?): (?:val_accuracy|failed)",
                          first.stdout)
    assert sorted(done for _, done, _ in progress) == ["1", "2", "3", "4"]
    assert "run 4 of 4" in first.stdout
    assert "--seeds=2 is below the 3 runs per function a statistical test needs" in first.stdout

    evaluation = read_json(results["evaluation"])
    assert evaluation["baseline"] == "relu"
    functions = {f["function"] for f in evaluation["functions"]}
    assert "relu" in functions and len(functions) == 2  # the baseline and the top-1 discovery
    # Two seeds are too few for a test: the evaluation says so instead of giving p-values.
    discovered = next(f for f in evaluation["functions"] if f["function"] != "relu")
    assert discovered["welch_p"] is None and discovered["verdict"] == "NOT_BLESSED"
    assert (Path(results["evaluation"]).parent / "NOT_BLESSED").exists()

    trials = [json.loads(line) for line in open(root / "tuner" / "search_results" / "3" / "trials.jsonl")]
    assert len(trials) == 4 and len({t["fingerprint"] for t in trials}) == 4
    assert all(t["fitness"] is not None for t in trials)
    assert sorted((trial_id, expression) for trial_id, _, expression in progress) == [
        (t["trial_id"], t["expression"]) for t in trials]
    report = Path(results["report_markdown"]).read_text()
    assert "| Rank | Trial | Expression |" in report
    label = function_label(discovered["function"])  # infix form, as everywhere people read it
    assert f"| `{label}` |" in report and "## Search progress" in report
    # It names the exported function, why that one (here: nothing beat relu), and whose model it ships.
    record = read_json(root / "export" / "activation.json")
    assert (f"Exported: {label} in export/activation.json (not blessed: no function of the search beat relu") in report
    assert f"export/model.keras is the trained model of its seed {record['model_seed']}," in report
    assert sorted(os.listdir(root / "report")) == ["report.html", "report.md", "report_figures"]  # one copy of each plot
    # The report's command recreates the run's configuration.
    command = re.search(r"```sh\n(actsearch run .*)\n```", report).group(1)
    flags = dict(word[2:].split("=", 1) for word in shlex.split(command)[2:])
    assert config_lib.preset("demo", flags).to_dict() == config_lib.preset("demo", {
        flag[2:].split("=", 1)[0]: flag.split("=", 1)[1] for flag in TINY + ["--parallel_trials=2", f"--pipeline_root={root}"]
    }).to_dict()


def test_the_same_command_again_reuses_every_step(finished):
    root, _, second = finished
    run = read_json(root / "run.json")
    assert run["run_id"] == "second"
    assert {cid: c["state"] for cid, c in run["components"].items()} == dict.fromkeys(COMPONENTS, "cached")
    published = read_json(root / "published.json")  # whose export/, report/ and tensorboard these are
    assert published["run_id"] == "second" and published["deliverables"] == ["export", "report", "tensorboard"]
    listing = actsearch("runs", f"--pipeline_root={root}").stdout
    assert "second" in listing and "0/7/0" in listing and "7/0/0" in listing
    shown = actsearch("show", "second", f"--pipeline_root={root}").stdout
    assert "reused execution" in shown and "lineage of the exported function" in shown


def test_the_exported_function_drops_into_a_new_model(finished):
    import keras

    import activations

    root, _, _ = finished
    record = read_json(root / "export" / "activation.json")
    make_activation = activations.load(root / "export" / "activation.json")
    assert str(make_activation.expression) == record["expression"]
    inputs = keras.Input((5, 3))
    first, second = make_activation(), make_activation()
    model = keras.Model(inputs, second(keras.layers.Dense(4)(first(inputs))))
    assert model(keras.ops.ones((2, 5, 3))).shape == (2, 5, 4)
    assert first is not second and first.expression == second.expression


def test_the_exported_model_loads_in_a_fresh_process_in_safe_mode(finished, tmp_path):
    import numpy as np

    from components.example_gen import read_examples

    root, _, _ = finished
    # It takes the test images as the Examples store them (uint8, 0..255) and normalises them
    # itself: its accuracy on them is the test accuracy its run reported.
    outputs = {cid: c.get("outputs", {}) for cid, c in read_json(root / "run.json")["components"].items()}
    images, labels = read_examples(outputs["example_gen"]["examples"][0]).arrays("test")
    np.save(tmp_path / "images.npy", images)
    record = read_json(root / "export" / "activation.json")
    assert record["input"]["normalized_internally"] is True and record["input"]["value_range"] == [0, 255]
    assert record["input"]["shape"] == list(images.shape[1:])
    code = (
        "import sys, numpy as np, keras, activations\n"
        "model = keras.saving.load_model(sys.argv[1], safe_mode=True)\n"
        "x = np.zeros((3,) + model.input_shape[1:], 'float32')\n"
        "print(model.predict(x, verbose=0).shape)\n"
        "np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0).argmax(-1))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(root / "export" / "model.keras"),
                           str(tmp_path / "images.npy"), str(tmp_path / "predicted.npy")],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "(3, 10)"
    accuracy = float(np.mean(np.load(tmp_path / "predicted.npy") == labels))
    runs = [json.loads(line) for line in open(Path(outputs["trainer"]["trained_models"][0]) / "runs.jsonl")]
    (run,) = [r for r in runs if r["function"] == record["evaluation"]["function"] and r["seed"] == record["model_seed"]]
    assert abs(accuracy - run["test_accuracy"]) <= 1 / len(labels) and accuracy > 0.2  # chance is 0.1


def test_tensorboard_serves_the_runs_logs(finished, tmp_path):
    from urllib.parse import urlencode

    from tensorboard_helpers import TensorBoardServer

    root, _, _ = finished
    server = TensorBoardServer(root / "tensorboard", tmp_path / "tensorboard.log")
    try:
        plugins = server.wait_for("/data/plugins_listing", lambda a: all(
            a.get(p, {}).get("enabled") for p in ("scalars", "images", "hparams")))
        assert {"scalars", "images", "hparams"} <= set(plugins)
        tags = server.wait_for("/data/plugin/scalars/tags", lambda a: "evolution" in a
                               and any(run.startswith("final/") for run in a))
        final_runs = [run for run in tags if run.startswith("final/") and run.count("/") == 1]
        assert len(final_runs) == 4  # 2 functions x 2 seeds, each with Keras' epoch curves:
        assert all("epoch_loss" in tags[f"{run}/train"] for run in final_runs)
        assert all("test_accuracy" in tags[run] for run in final_runs)
        # Each curve once: under the run's train/ (Keras' own logs), not again beside its metrics.
        assert not any(tag.startswith("epoch_") for run in final_runs for tag in tags[run])
        trial_runs = [run for run in tags if run.startswith("search/")]
        assert len(trial_runs) == 4 and all("fitness" in tags[run] for run in trial_runs)
        best = server.get("/data/plugin/scalars/scalars?"
                          + urlencode({"run": "evolution", "tag": "evolution/best"}))
        assert len(best) >= 1
        images = server.wait_for("/data/plugin/images/tags", lambda a: "functions" in a)
        assert len(images["functions"]) == 2
        experiment = server.wait_for("/data/plugin/hparams/experiment", lambda a: a.get("hparamInfos"),
                                     body={"experimentName": ""})
        activation = next(h for h in experiment["hparamInfos"] if h["name"] == "activation")
        assert "relu" in activation["domainDiscrete"]
    finally:
        server.stop()


def test_changing_the_final_budget_reruns_only_training_and_after(finished):
    root, _, _ = finished
    actsearch("run", *TINY, "--parallel_trials=2", "--final_epochs=1", f"--pipeline_root={root}",
              "--run_id=third")
    states = {cid: c["state"] for cid, c in read_json(root / "run.json")["components"].items()}
    assert states == {**dict.fromkeys(COMPONENTS[:3], "cached"), **dict.fromkeys(COMPONENTS[3:], "complete")}


def test_a_killed_run_continues_where_it_stopped(tmp_path):
    root = tmp_path / "root"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "pipeline.cli", "run", *TINY, f"--pipeline_root={root}"]
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    results = root / "tuner" / ".resume"
    deadline = time.monotonic() + 300
    try:
        while len(list(results.glob("*/results/*.json"))) < 2:
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    done_before = {}
    for path in results.glob("*/results/*.json"):
        result = read_json(path)
        done_before[result["job_id"]] = result["job_seconds"]
    assert 2 <= len(done_before) < 4
    # No process holds the root any more: the killed run is listed as interrupted at once.
    (killed,) = [line for line in actsearch("runs", f"--pipeline_root={root}").stdout.splitlines()[1:]]
    assert killed.split()[1] == "INTERRUPTED"

    actsearch("run", *TINY, f"--pipeline_root={root}", "--run_id=again")
    run = read_json(root / "run.json")
    assert run["status"] == "complete"
    states = {cid: c["state"] for cid, c in run["components"].items()}
    assert states["example_gen"] == states["candidate_gen"] == "cached" and states["tuner"] == "complete"
    (trials_file,) = (root / "tuner" / "search_results").glob("*/trials.jsonl")
    trials = [json.loads(line) for line in trials_file.read_text().splitlines()]
    assert len(trials) == 4 and all(t["fitness"] is not None for t in trials)
    # Trials finished before the kill were not trained again: their timings are the old ones.
    seconds = {f"trial_{t['trial_id']}_{t['fingerprint']}": t["seconds"] for t in trials}
    for job_id, took in done_before.items():
        assert seconds[job_id] == took
    listing = actsearch("runs", f"--pipeline_root={root}").stdout
    assert "interrupted" in listing.lower()


@pytest.mark.parametrize("args, message", [
    (["--max_trials=many"], "max_trials expects int"),
    (["--model=resnet1000"], "model 'resnet1000' is not allowed"),
    (["--data=folder:/no/such/folder"], "data folder '/no/such/folder' does not exist"),
    (["--data=ftp:x"], "must start with embedded:, tfds: or folder:"),
    (["--pipeline_root=/proc/actsearch"], "is not writable"),
    (["--baselines=swish"], "baselines must include relu"),
    (["--strategy=rl"], "strategy 'rl' trains a controller over the Swish paper's core units: add --space=swish"),
    (["--baselines=relu,nosuch"], "baselines: 'nosuch' is not a known name or a valid expression"),
    (["--seed_functions=relu,add(x,"], "seed_functions: unbalanced parentheses"),
    (["--augment", "--max_examples=0"], "max_examples must be at least 3"),  # a bare bool flag takes no value
])
def test_bad_settings_fail_before_any_work(args, message, tmp_path):
    extra = [] if any(a.startswith("--pipeline_root") for a in args) else [f"--pipeline_root={tmp_path / 'r'}"]
    done = actsearch("run", *TINY, *args, *extra, check=False, timeout=120)
    assert done.returncode == 2
    assert message in done.stderr
    assert not (tmp_path / "r" / "metadata.sqlite").exists()


def test_ctrl_c_stops_with_a_short_message_and_records_the_run_as_interrupted(tmp_path):
    root = tmp_path / "root"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "pipeline.cli", "run", *TINY, f"--pipeline_root={root}"]
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not list((root / "tuner" / ".resume").glob("*/results/*.json")):
        assert process.poll() is None and time.monotonic() < deadline, "no trial finished in time"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "interrupted" in stderr and "run the same command again" in stderr
    assert "Traceback" not in stderr
    assert read_json(root / "run.json")["status"] == "interrupted"


def test_a_root_in_use_is_refused_without_promising_a_resume(tmp_path):
    import fcntl

    root = tmp_path / "root"
    root.mkdir()
    with open(root / ".lock", "w") as lock:  # what a running `actsearch run` holds
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        done = actsearch("run", *TINY, f"--pipeline_root={root}", check=False, timeout=120)
    assert done.returncode == 2 and "another run is using pipeline_root" in done.stderr  # a usage error
    assert "run the same command again" not in done.stderr and "Traceback" not in done.stderr


def test_a_failing_step_is_reported_without_a_traceback(tmp_path):
    empty = tmp_path / "no-images"
    (empty / "cat").mkdir(parents=True)
    root = tmp_path / "r"
    (root / "report").mkdir(parents=True)  # deliverables an earlier run on this root published
    (root / "published.json").write_text(json.dumps(
        {"run_id": "earlier", "published": "2026-01-02 03:04:05", "deliverables": ["report"]}))
    done = actsearch("run", *TINY, f"--data=folder:{empty}", f"--pipeline_root={root}", check=False)
    assert done.returncode == 1
    assert "component 'example_gen' failed" in done.stderr and "no images" in done.stderr
    assert "Traceback" not in done.stderr and "run the same command again" in done.stderr
    assert json.loads((root / "run.json").read_text())["status"] == "failed"
    assert (f"report/ under {root} still hold the results of run earlier (completed 2026-01-02 03:04:05), "
            "not of this run") in done.stderr


def test_unknown_flags_and_commands_are_refused():
    done = actsearch("run", "--max_trails=3", check=False, timeout=120)
    assert done.returncode != 0 and "max_trails" in done.stderr
    done = actsearch("frobnicate", check=False, timeout=120)
    assert done.returncode == 2 and "expected a command" in done.stderr and "got frobnicate" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1  # the error alone, not above a hundred lines of flags


@pytest.mark.parametrize("entry", ["console script", "python -m"])
def test_help_lists_the_commands_and_explains_every_setting(entry):
    # The console script's __main__ is a generated wrapper without docstring or flags; this is
    # the wrapper pip writes.
    launcher = (["-c", "import sys; from pipeline.cli import run_main; sys.argv[0] = 'actsearch'; run_main()"]
                if entry == "console script" else ["-m", "pipeline.cli"])
    done = subprocess.run([sys.executable, *launcher, "--help"], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert "Traceback" not in done.stderr, done.stderr[-3000:]  # absl's --help exits with status 1
    for command in ("actsearch run --preset=demo", "actsearch compile", "actsearch runs", "actsearch show RUN_ID"):
        assert command in done.stdout
    for field, text in config_lib.FIELD_HELP.items():
        flag = re.search(rf"--(?:\[no\])?{field}: (.*?)(?=\n  --|\Z)", done.stdout, re.S)
        assert flag, f"--{field} missing from --help"
        assert " ".join(flag.group(1).split()).startswith(" ".join(text.split())[:40])


def test_compile_names_an_output_path_it_cannot_write(tmp_path):
    (tmp_path / "a_file").write_text("x")
    done = actsearch("compile", f"--output={tmp_path / 'a_file' / 'p.yaml'}", check=False, timeout=120)
    assert done.returncode == 2 and "cannot write" in done.stderr and "Traceback" not in done.stderr


def test_compile_writes_a_kubeflow_pipeline_with_resources(tmp_path):
    output = tmp_path / "pipeline.yaml"
    resources = {"tuner": {"accelerator": "nvidia.com/gpu", "accelerator_count": 1},
                 "trainer": {"cpu": "8", "memory": "32G", "accelerator": "nvidia.com/gpu", "accelerator_count": 2}}
    done = actsearch("compile", "--target=kubeflow", f"--output={output}", "--preset=paper",
                     "--image=registry.example/actsearch:1", f"--resources={json.dumps(resources)}")
    assert "7 steps" in done.stdout
    doc = yaml.safe_load(output.read_text())
    assert {f"comp-{c.replace('_', '-')}" for c in COMPONENTS} == set(doc["components"])
    executors = doc["deploymentSpec"]["executors"]
    images = {e["container"]["image"] for e in executors.values()}
    assert images == {"registry.example/actsearch:1"}
    trainer = executors[doc["components"]["comp-trainer"]["executorLabel"]]["container"]
    assert trainer["resources"]["accelerator"]["resourceCount"] == "2"
    assert trainer["resources"]["resourceCpuLimit"] == "8"
    tasks = doc["root"]["dag"]["tasks"]
    assert tasks["trainer"]["dependentTasks"] == ["example-gen", "tuner"] or set(
        tasks["trainer"]["dependentTasks"]) == {"example-gen", "tuner"}


def test_training_steps_ask_for_resources_by_default(tmp_path):
    def container(doc, component):
        return doc["deploymentSpec"]["executors"][doc["components"][f"comp-{component}"]["executorLabel"]]["container"]

    actsearch("compile", "--preset=demo", f"--output={tmp_path / 'demo.yaml'}")
    demo = yaml.safe_load((tmp_path / "demo.yaml").read_text())
    for step in ("tuner", "trainer"):
        assert container(demo, step)["resources"]["resourceCpuLimit"] == "4"
        assert "accelerator" not in container(demo, step)["resources"]
    assert "resources" not in container(demo, "evaluator")
    actsearch("compile", "--preset=paper", f"--output={tmp_path / 'paper.yaml'}")
    paper = yaml.safe_load((tmp_path / "paper.yaml").read_text())
    for step in ("tuner", "trainer"):
        assert container(paper, step)["resources"]["accelerator"]["resourceCount"] == "4"
    done = actsearch("compile", "--resources={tuner: 1}", f"--output={tmp_path / 'x.yaml'}", check=False)
    assert done.returncode == 2 and "resources expects dict[str, dict] as JSON" in done.stderr
    done = actsearch("compile", '--resources={"tunr": {"cpu": "2"}}', f"--output={tmp_path / 'x.yaml'}", check=False)
    assert done.returncode == 2 and "tunr" in done.stderr


def test_the_same_dag_runs_through_kfp_local(tmp_path):
    root = tmp_path / "root"
    done = actsearch("run", *TINY, "--runner=kfp-local", f"--pipeline_root={root}", "--run_id=k1", timeout=900)
    run = read_json(root / "run.json")
    assert run["runner"] == "kfp-local" and run["status"] == "complete", done.stdout[-2000:]
    assert set(run["components"]) == set(COMPONENTS)
    assert all(c["state"] == "complete" for c in run["components"].values())
    exported = read_json(run["results"]["exported_activation"])
    assert exported["evaluation"]["baseline"] == "relu"
    assert os.path.exists(run["results"]["report"])
    assert read_json(root / "published.json")["run_id"] == "k1"  # published while the root was locked
    (listed,) = actsearch("runs", f"--pipeline_root={root}").stdout.splitlines()[1:]
    assert listed.split()[:3] == ["k1", "COMPLETE", "kfp-local"] and listed.endswith("7/0/0")
    shown = actsearch("show", "k1", f"--pipeline_root={root}").stdout
    assert shown.startswith("run k1 (") and "runner kfp-local): COMPLETE" in shown and "tuner" in shown

    # Run again: every step reuses its outputs from k1, copied into k2's own directories.
    actsearch("run", *TINY, "--runner=kfp-local", f"--pipeline_root={root}", "--run_id=k2", timeout=900)
    again = read_json(root / "run.json")
    assert again["status"] == "complete" and all(c["state"] == "cached" for c in again["components"].values())
    assert all(uri.startswith(again["kfp_root"] + os.sep) for c in again["components"].values()
               for uris in c["outputs"].values() for uri in uris)
    assert os.path.exists(again["results"]["report"])
    assert read_json(again["results"]["exported_activation"]) == exported
    assert read_json(root / "published.json")["run_id"] == "k2"
    (newest, _) = actsearch("runs", f"--pipeline_root={root}").stdout.splitlines()[1:]
    assert newest.split()[:3] == ["k2", "COMPLETE", "kfp-local"] and newest.endswith("0/7/0")
    shown = actsearch("show", "k2", f"--pipeline_root={root}").stdout
    assert shown.count("CACHED") == 7 and shown.count("(reused execution") == 7


def test_show_finds_the_lineage_of_a_function_exported_in_its_simplified_form(tmp_path, capsys):
    import activations
    from pipeline.cli import _print_function_lineage

    # Dropping the dead alpha moves the fingerprint (the shifted probe is per parameter position),
    # so only the search's own spelling, kept as searched_as, finds the trial.
    searched, parent = "alpha*zero(x) + tanh(beta*x)", "tanh(beta*x) + zero(x)"
    assert activations.fingerprint(searched) != activations.fingerprint(activations.simplify(searched))
    with open(tmp_path / "trials.jsonl", "w") as f:
        for trial_id, expression, parents in (("00", parent, []), ("07", searched, ["00"])):
            f.write(json.dumps({"trial_id": trial_id, "expression": expression, "parents": parents, "generation": 1,
                                "operator": "add_parameter", "fitness": 0.5,
                                "fingerprint": activations.fingerprint(expression)}) + "\n")
    record = tmp_path / "activation.json"
    record.write_text(json.dumps({"expression": str(activations.simplify(searched)), "searched_as": searched}))
    _print_function_lineage(str(record), str(tmp_path))
    shown = capsys.readouterr().out
    assert "lineage of the exported function tanh(beta * x)" in shown
    assert "trial 07" in shown and "trial 00" in shown
