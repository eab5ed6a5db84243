"""Kubeflow target: compiled KFP v2 YAML structure, resource options, kfp.local execution."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from fractions import Fraction

import pytest
import yaml

import kfp_toy_components as toy
from components.base import Artifact, BaseExecutor, Component, ComponentSpec, OutputSpec
from pipeline import kfp_entry
from pipeline.dag import Pipeline
from pipeline.kubeflow import (KFP_LOG, KubeflowError, ResourceSpecError, compile_pipeline,
                               cpu_quantity, kfp_name, memory_quantity, run_kfp_local)
from pipeline.local_runner import LocalRunner, PipelineError, root_in_use
from pipeline.metadata import MetadataStore

GPU_STEP = {"cpu": "8", "memory": "32G", "accelerator": "NVIDIA_TESLA_T4",
            "accelerator_count": 1, "retries": 2}


def compile_to_dict(pipeline: Pipeline, path, **kwargs) -> dict:
    out = compile_pipeline(pipeline, str(path), **kwargs)
    assert out == str(path) and os.path.isfile(out)
    with open(out) as f:
        return yaml.safe_load(f)


def artifact_types(definitions: dict) -> dict[str, str]:
    return {name: a["artifactType"]["schemaTitle"]
            for name, a in definitions.get("artifacts", {}).items()}


def executor_of(doc: dict, component_id: str) -> dict:
    label = doc["components"][f"comp-{kfp_name(component_id)}"]["executorLabel"]
    return doc["deploymentSpec"]["executors"][label]["container"]


# ---- compiled structure ------------------------------------------------------------------------

def test_compiled_yaml_has_one_typed_component_per_component(tmp_path):
    pipeline = toy.build(tmp_path / "root")
    doc = compile_to_dict(pipeline, tmp_path / "p.yaml", image="registry.example/actsearch:1.2",
                          resources={"train_a": GPU_STEP})
    assert doc["pipelineInfo"]["name"] == "kfp-toy"
    comps = doc["components"]
    assert set(comps) == {"comp-source", "comp-train-a", "comp-train-b", "comp-evaluate"}
    for comp in comps.values():
        assert comp["inputDefinitions"]["parameters"] == {
            "exec_properties": {"parameterType": "STRING"},
            "resume_root": {"parameterType": "STRING"}}
    source, train, evaluate = comps["comp-source"], comps["comp-train-a"], comps["comp-evaluate"]
    assert artifact_types(source["inputDefinitions"]) == {}
    assert artifact_types(source["outputDefinitions"]) == {"examples": "system.Dataset"}
    # The optional, unwired input 'warm_start' does not appear.
    assert artifact_types(train["inputDefinitions"]) == {"examples": "system.Dataset"}
    assert artifact_types(train["outputDefinitions"]) == {"models": "system.Model",
                                                          "logs": "system.Artifact"}
    # Two channels fanning in become two typed inputs.
    assert artifact_types(evaluate["inputDefinitions"]) == {"models_0": "system.Model",
                                                            "models_1": "system.Model"}
    assert artifact_types(evaluate["outputDefinitions"]) == {"evaluation": "system.Metrics"}
    assert comps["comp-train-b"] == {**train, "executorLabel": "exec-train-b"}


def test_compiled_dag_follows_the_pipeline_edges(tmp_path):
    pipeline = toy.build(tmp_path / "root")
    doc = compile_to_dict(pipeline, tmp_path / "p.yaml")
    tasks = doc["root"]["dag"]["tasks"]
    assert set(tasks) == {"source", "train-a", "train-b", "evaluate"}
    assert {t: sorted(spec.get("dependentTasks", [])) for t, spec in tasks.items()} == {
        "source": [], "train-a": ["source"], "train-b": ["source"],
        "evaluate": ["train-a", "train-b"]}
    wiring = {(t, name): (a["taskOutputArtifact"]["producerTask"],
                          a["taskOutputArtifact"]["outputArtifactKey"])
              for t, spec in tasks.items()
              for name, a in spec.get("inputs", {}).get("artifacts", {}).items()}
    assert wiring == {("train-a", "examples"): ("source", "examples"),
                      ("train-b", "examples"): ("source", "examples"),
                      ("evaluate", "models_0"): ("train-a", "models"),
                      ("evaluate", "models_1"): ("train-b", "models")}
    for component in pipeline.components:
        task = tasks[kfp_name(component.id)]
        assert task["taskInfo"]["name"] == component.id         # our id as display name
        constant = task["inputs"]["parameters"]["exec_properties"]["runtimeValue"]["constant"]
        assert json.loads(constant) == component.exec_properties
        assert task["inputs"]["parameters"]["resume_root"] == {
            "componentInputParameter": "resume_root"}         # the pipeline's parameter
        assert task["cachingOptions"] == {"enableCache": True}
    assert doc["root"]["inputDefinitions"]["parameters"]["resume_root"]["defaultValue"] == ""
    shared = compile_to_dict(pipeline, tmp_path / "q.yaml", resume_root="/gcs/bucket/resume")
    assert shared["root"]["inputDefinitions"]["parameters"]["resume_root"][
        "defaultValue"] == "/gcs/bucket/resume"


def test_compiled_executors_image_command_and_resources(tmp_path):
    pipeline = toy.build(tmp_path / "root")
    doc = compile_to_dict(pipeline, tmp_path / "p.yaml", image="registry.example/actsearch:1.2",
                          resources={"train_a": GPU_STEP, "evaluate": {"caching": False}})
    for component in pipeline.components:
        container = executor_of(doc, component.id)
        assert container["image"] == "registry.example/actsearch:1.2"
        command = "\n".join(container["command"] + container["args"])
        assert "pip install" not in command                  # the image carries the project
        assert "import pipeline.kfp_entry as _actsearch_entry" in command
        assert f"kfp_toy_components.{type(component).__name__}Executor" in command
    resources = executor_of(doc, "train_a")["resources"]
    assert resources["resourceCpuLimit"] == "8" and resources["resourceMemoryLimit"] == "32G"
    assert resources["accelerator"]["resourceType"] == "NVIDIA_TESLA_T4"
    assert resources["accelerator"]["resourceCount"] == "1"
    for other in ("source", "train_b", "evaluate"):
        assert "resources" not in executor_of(doc, other)
    tasks = doc["root"]["dag"]["tasks"]
    assert tasks["train-a"]["retryPolicy"]["maxRetryCount"] == 2
    assert "retryPolicy" not in tasks["train-b"]
    assert tasks["evaluate"]["cachingOptions"] == {}          # caching off for this step
    assert tasks["source"]["cachingOptions"] == {"enableCache": True}

    no_cache = compile_to_dict(pipeline, tmp_path / "q.yaml", enable_caching=False,
                               packages_to_install=["some-extra==1.0"])
    assert all(t["cachingOptions"] == {} for t in no_cache["root"]["dag"]["tasks"].values())
    command = " ".join(executor_of(no_cache, "source")["command"])
    assert "some-extra==1.0" in command and "kfp==" not in command


def test_parameter_values_never_enter_generated_source(tmp_path):
    hostile = "'); import os; os.system('echo pwned') #\"\"\""
    source = toy.Source()
    evaluate = toy.Evaluate(models=[toy.Train(examples=source.outputs["examples"]
                                              ).outputs["models"]], label=hostile)
    pipeline = Pipeline("hostile", [source, evaluate.inputs["models"][0].producer, evaluate],
                        tmp_path)
    doc = compile_to_dict(pipeline, tmp_path / "p.yaml")
    code = "\n".join(executor_of(doc, "evaluate")["command"])
    assert "pwned" not in code
    constant = doc["root"]["dag"]["tasks"]["evaluate"]["inputs"]["parameters"][
        "exec_properties"]["runtimeValue"]["constant"]
    assert json.loads(constant)["label"] == hostile


# ---- option errors -------------------------------------------------------------------------------

@pytest.mark.parametrize("resources, message", [
    ({"tuner": {"cpu": "8"}}, r"unknown component 'tuner'; components: \['source'"),
    ({"train_a": {"gpus": 1}}, r"unknown key\(s\) \['gpus'\]; allowed: \["),
    ({"train_a": {"cpu": "eight"}}, r"\['cpu'\] = 'eight': expected a number of CPUs"),
    ({"train_a": {"cpu": -1}}, r"expected a number of CPUs"),
    ({"train_a": {"memory": "32GB"}}, r"\['memory'\] = '32GB': expected an amount of memory"),
    ({"train_a": {"memory": 1.5}}, r"expected an amount of memory"),
    ({"train_a": {"accelerator": "T4", "accelerator_count": -1}}, r"non-negative integer"),
    ({"train_a": {"accelerator": "T4", "accelerator_count": True}}, r"non-negative integer"),
    ({"train_a": {"accelerator_count": 2}}, r"'accelerator_count' needs 'accelerator'"),
    ({"train_a": {"accelerator": ""}}, r"expected an accelerator type"),
    ({"train_a": {"caching": "no"}}, r"expected true or false"),
    ({"train_a": {"env": {"A B": "1"}}}, r"environment variable"),
    ({"train_a": {"accelerator": "T4", "accelerator_count": 0}},
     r"'accelerator' is 'T4' but 'accelerator_count' is 0; give a count of 1 or more, or remove "
     r"both keys"),
    ({"train_a": {"accelerator": "T4", "accelerator_count": "1"}},
     r"\['accelerator_count'\] = '1': expected a non-negative integer"),
    ({"train_a": {"retries": "3"}}, r"\['retries'\] = '3': expected a non-negative integer"),
    ({"train_a": {"retries": 2.5}}, r"\['retries'\] = 2.5: expected a non-negative integer"),
    ({"train_a": {"retries": True}}, r"\['retries'\] = True: expected a non-negative integer"),
    ({"train_a": {"cpu": "4", "cpu_request": "8"}},
     r"resources\['train_a'\]: cpu_request '8' \(8 CPU\) is above the cpu limit '4' "
     r"\(4 CPU\); Kubernetes allows a request up to its limit"),
    ({"train_a": {"cpu": "500m", "cpu_request": 1}},
     r"cpu_request '1' \(1 CPU\) is above the cpu limit '500m' \(0.5 CPU\)"),
    ({"train_a": {"cpu": "1.5", "cpu_request": "1501m"}}, r"cpu_request '1501m'"),
    ({"train_a": {"memory": "1G", "memory_request": "4G"}},
     r"resources\['train_a'\]: memory_request '4G' \(4000000000 bytes\) is above the memory "
     r"limit '1G' \(1000000000 bytes\)"),
    ({"train_a": {"memory": "2G", "memory_request": "2Gi"}},     # 2Gi is 2147483648 bytes
     r"memory_request '2Gi' \(2147483648 bytes\) is above the memory limit '2G'"),
    ({"train_a": {"memory": "512Mi", "memory_request": 536870913}}, r"memory_request '536870913'"),
    ({"train_a": "big"}, r"resources\['train_a'\] must be a dict"),
    (["train_a"], r"resources must be a dict"),
])
def test_bad_resources_are_rejected_before_compiling(tmp_path, resources, message):
    with pytest.raises(ResourceSpecError, match=message):
        compile_pipeline(toy.build(tmp_path), str(tmp_path / "p.yaml"), resources=resources)
    assert not (tmp_path / "p.yaml").exists()


def test_numbers_are_accepted_for_cpu_and_memory(tmp_path):
    doc = compile_to_dict(toy.build(tmp_path), tmp_path / "p.yaml",
                          resources={"source": {"cpu": 2, "memory": 2000000000, "cpu_request": "500m",
                                                "memory_request": "1Gi"}})
    res = executor_of(doc, "source")["resources"]
    assert (res["resourceCpuLimit"], res["resourceMemoryLimit"]) == ("2", "2000000000")
    assert (res["resourceCpuRequest"], res["resourceMemoryRequest"]) == ("500m", "1Gi")


def test_requests_up_to_their_limits_compile_in_any_unit(tmp_path):
    steps = {"source": {"cpu": "2", "cpu_request": "2", "memory": "1Gi",
                        "memory_request": "1073741824"},
             "train_a": {"cpu": "0.5", "cpu_request": "500m", "memory": "1G",
                         "memory_request": "953Mi"},
             "train_b": {"cpu_request": "64", "memory_request": "1Ti"},    # no limit: no bound
             "evaluate": {"cpu": 1.5, "cpu_request": "1500m", "retries": 0}}
    doc = compile_to_dict(toy.build(tmp_path), tmp_path / "p.yaml", resources=steps)
    res = executor_of(doc, "train_a")["resources"]
    assert (res["resourceCpuRequest"], res["resourceMemoryRequest"]) == ("500m", "953Mi")
    assert executor_of(doc, "train_b")["resources"]["resourceCpuRequest"] == "64"


@pytest.mark.parametrize("text, cpus", [("500m", Fraction(1, 2)), ("2", 2), ("1.5", Fraction(3, 2)),
                                        ("0.1", Fraction(1, 10)), ("100m", Fraction(1, 10))])
def test_cpu_quantities_are_parsed_exactly(text, cpus):
    assert cpu_quantity(text) == cpus


@pytest.mark.parametrize("text, size", [("512Mi", 512 * 2**20), ("4G", 4 * 10**9),
                                        ("1Gi", 2**30), ("1000000", 10**6), ("3K", 3000),
                                        ("2Ki", 2048), ("1E", 10**18), ("1Ei", 2**60)])
def test_memory_quantities_are_parsed_in_bytes(text, size):
    assert memory_quantity(text) == size


def test_other_compile_errors(tmp_path):
    with pytest.raises(KubeflowError, match="image must be"):
        compile_pipeline(toy.build(tmp_path), str(tmp_path / "p.yaml"), image="my image")
    for bad in ("gs://bucket/resume", "relative/resume"):
        with pytest.raises(KubeflowError, match="resume_root must be an absolute path"):
            compile_pipeline(toy.build(tmp_path), str(tmp_path / "p.yaml"), resume_root=bad)
    with pytest.raises(KubeflowError, match="packages_to_install must be a list"):
        compile_pipeline(toy.build(tmp_path), str(tmp_path / "p.yaml"),
                         packages_to_install="numpy")
    source = toy.Source()
    clash = [source, toy.Train(component_id="train_a", examples=source.outputs["examples"]),
             toy.Train(component_id="train-a", examples=source.outputs["examples"])]
    with pytest.raises(KubeflowError, match="'train_a' and 'train-a' both give the Kubeflow "
                                            "name 'train-a'"):
        compile_pipeline(Pipeline("p", clash, tmp_path), str(tmp_path / "p.yaml"))

    def local_component():
        class Executor(BaseExecutor):
            def Do(self, input_dict, output_dict, exec_properties):
                pass

        class Spec(ComponentSpec):
            OUTPUTS = {"out": OutputSpec("Report")}

        class Local(Component):
            SPEC_CLASS, EXECUTOR_CLASS = Spec, Executor
        return Local()

    with pytest.raises(KubeflowError, match="not importable by path; define executor classes "
                                            "at module level"):
        compile_pipeline(Pipeline("p", [local_component()], tmp_path), str(tmp_path / "p.yaml"))


# ---- the step entry point ------------------------------------------------------------------------

def test_entry_point_runs_an_executor_from_artifact_json(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "values.json").write_text("[1.0, 2.0]")
    inputs = {"examples": [Artifact("Examples", str(src), {"count": 2}).to_dict()]}
    outputs = {"models": {"type_name": "TrainedModels", "uri": str(tmp_path / "m")},
               "logs": {"type_name": "TensorBoardLogs", "uri": str(tmp_path / "l")}}
    assert kfp_entry.main([
        "--executor=kfp_toy_components.TrainExecutor", "--component_id=t",
        f"--inputs={json.dumps(inputs)}", f"--outputs={json.dumps(outputs)}",
        '--exec_properties={"factor": 3.0, "fail": false}',
        '--publish={"logs": "tensorboard"}']) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.load(open(tmp_path / "m" / "values.json")) == [3.0, 6.0]
    assert printed["outputs"]["models"]["properties"] == {"factor": 3.0}
    assert printed["results"] == {"tensorboard": str(tmp_path / "l")}
    with pytest.raises(kfp_entry.StepError, match="no module of it can be imported"):
        kfp_entry.load_executor_class("no_such_module.Executor")
    with pytest.raises(kfp_entry.StepError, match="has no 'Nope'"):
        kfp_entry.load_executor_class("kfp_toy_components.Nope")
    with pytest.raises(kfp_entry.StepError, match="not a BaseExecutor subclass"):
        kfp_entry.load_executor_class("kfp_toy_components.Source")


# ---- running through kfp.local -------------------------------------------------------------------

def test_run_kfp_local_runs_the_compiled_pipeline(tmp_path, capsys):
    from kfp.local import config as local_config

    pipeline = toy.build(tmp_path / "root", n=4)
    locked_when_done = []

    def on_complete(done):
        locked_when_done.append(root_in_use(done.pipeline_root))

    result = run_kfp_local(pipeline, run_id="k1", resources={"train_a": GPU_STEP},
                           on_complete=on_complete)
    assert locked_when_done == [True]           # the CLI publishes while the root is still locked
    assert not root_in_use(result.pipeline_root)
    assert local_config.LocalExecutionConfig.instance is None    # global kfp.local state restored
    assert result.status == "COMPLETE" and result.run_id == "k1"
    assert result.kfp_root == str(tmp_path / "root" / "kfp-local" / "k1")
    assert os.path.isfile(result.pipeline_yaml)
    # The terminal gets the steps' own lines and kfp.local's task lines; the run's log file all.
    shown = capsys.readouterr().out
    with open(os.path.join(result.kfp_root, KFP_LOG)) as f:
        logged = f.read()
    for text in ("Executing task", "finished with status", "[train_a] running"):
        assert text in shown and text in logged
    for text in ("Got executor_input", '"parameterValues"', "outputs:", "Loading KFP component"):
        assert text in logged and text not in shown
    assert len(shown.splitlines()) < len(logged.splitlines()) / 2

    paths = result.output_paths
    assert set(paths) == {"source", "train_a", "train_b", "evaluate"}
    for outputs in paths.values():
        for path in outputs.values():
            assert path.startswith(result.kfp_root + os.sep) and os.path.isdir(path)
    # Values and properties crossed process boundaries through the KFP artifacts.
    assert toy.read_values(result.output("train_b", "models")) == [10.0, 20.0, 30.0, 40.0]
    assert result.output("source", "examples").properties == {"count": 4, "splits": ["train"]}
    evaluation = result.output("evaluate", "evaluation")
    assert evaluation.type_name == "Evaluation"
    assert evaluation.properties == {"best": 100.0, "blessed": True, "label": "toy run"}
    summary = json.load(open(os.path.join(evaluation.uri, "summary.json")))
    assert summary == {"label": "toy run", "totals": [20.0, 100.0], "factors": [2.0, 10.0]}

    assert result.results["evaluation"] == evaluation.uri
    assert result.results["summary"] == os.path.join(evaluation.uri, "summary.json")
    assert result.results["tensorboard"] in (paths["train_a"]["logs"], paths["train_b"]["logs"])
    doc = json.load(open(tmp_path / "root" / "run.json"))
    assert result.run_json == str(tmp_path / "root" / "run.json")
    assert doc["run_id"] == "k1" and doc["status"] == "complete" and doc["runner"] == "kfp-local"
    assert doc["results"] == result.results
    assert {cid: c["state"] for cid, c in doc["components"].items()} == dict.fromkeys(
        paths, "complete")
    assert doc["components"]["evaluate"]["outputs"] == {"evaluation": [evaluation.uri]}
    assert doc["metadata"] == str(tmp_path / "root" / "metadata.sqlite")

    # Recorded in the root's metadata like a local run: 4 executions, none cached, lineage.
    with MetadataStore(doc["metadata"]) as store:
        (run,) = store.list_runs()
        assert (run.run_id, run.status, run.runner) == ("k1", "COMPLETE", "kfp-local")
        assert run.results == result.results
        executions = {e.component_id: e for e in store.executions("k1")}
        assert set(executions) == set(paths)
        for cid, e in executions.items():
            assert e.state == "COMPLETE" and e.start_time <= e.end_time and e.cached_from is None
            assert e.cache_key.startswith("kfp-local:")   # never a cache hit for the local runner
            assert doc["components"][cid]["execution_id"] == e.id
            assert {n: [a.uri for a in arts] for n, arts in store.outputs_of(e.id).items()} == {
                n: [p] for n, p in paths[cid].items()}
        assert executions["evaluate"].exec_properties == {"label": "toy run"}
        (evaluated,) = store.outputs_of(executions["evaluate"].id)["evaluation"]
        assert evaluated.properties == evaluation.properties and evaluated.fingerprint
        lineage = store.lineage(evaluated.id)
        assert [p["execution"]["component_id"] for p in lineage["inputs"]["models"]] == [
            "train_a", "train_b"]

    # The same executors under the local runner give the same evaluation.
    local = LocalRunner(on_progress=lambda e: None).run(toy.build(tmp_path / "local", n=4))
    with open(local.output("evaluate", "evaluation").path("summary.json")) as f:
        assert json.load(f) == summary
    with pytest.raises(PipelineError, match="run 'k1' already exists"):
        run_kfp_local(pipeline, run_id="k1")


def test_run_kfp_local_failure_names_the_component(tmp_path):
    pipeline = toy.build(tmp_path, fail_b=True)
    with pytest.raises(PipelineError, match="component 'train_b' failed under kfp.local: "
                       "RuntimeError: training failed on purpose in train_b") as info:
        run_kfp_local(pipeline, run_id="bad")
    assert info.value.component_id == "train_b" and info.value.run_id == "bad"
    doc = json.load(open(tmp_path / "run.json"))
    assert doc["status"] == "failed" and "train_b" in doc["error"]
    states = {cid: c["state"] for cid, c in doc["components"].items()}
    assert states["source"] == "complete" and states["train_b"] == "failed"
    assert states["evaluate"] == "not run"
    with MetadataStore(str(tmp_path / "metadata.sqlite")) as store:
        run = store.get_run("bad")
        assert run.status == "FAILED" and run.runner == "kfp-local" and "train_b" in run.error
        executions = {e.component_id: e for e in store.executions("bad")}
        assert executions["source"].state == "COMPLETE" and "evaluate" not in executions
        assert executions["train_b"].state == "FAILED" and executions["train_b"].end_time
        assert "training failed on purpose" in executions["train_b"].error


def test_run_kfp_local_holds_the_root_lock(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    with open(root / ".lock", "w") as lock:            # as a local run holds it
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(PipelineError, match="another run is using pipeline_root"):
            run_kfp_local(toy.build(root), run_id="k")
    assert not (root / "kfp-local" / "k").exists() and not (root / "run.json").exists()


def test_kfp_local_step_resumes_in_a_stable_directory(tmp_path, monkeypatch, capsys):
    root, log = tmp_path / "root", tmp_path / "log"
    monkeypatch.setenv("TOY_LOG", str(log))
    monkeypatch.setenv("TOY_STOP_AT", "3")
    monkeypatch.setenv("TOY_INTERRUPT_PID", str(os.getpid()))   # Ctrl-C in step 3
    with pytest.raises(KeyboardInterrupt):
        run_kfp_local(toy.build_search(root, steps=4), run_id="first")
    ((work, _), *_) = toy.read_log(log)
    assert toy.read_log(log) == [(work, 1), (work, 2), (work, 3)]
    assert os.path.dirname(work) == str(root / "search" / ".resume")   # the local runner's layout
    assert json.load(open(root / "run.json"))["status"] == "interrupted"
    with MetadataStore(str(root / "metadata.sqlite")) as store:
        assert store.get_run("first").status == "INTERRUPTED"
        search = store.executions("first")[-1]
        assert search.component_id == "search" and search.state == "INTERRUPTED"   # stopped, not failed
        assert search.error == "interrupted: the run was stopped by Ctrl-C before it finished"
        key = search.cache_key.removeprefix("kfp-local:")
        assert os.path.basename(work) == key[:16]       # the step's key is the runner's

    monkeypatch.delenv("TOY_STOP_AT")
    capsys.readouterr()
    changed = run_kfp_local(toy.build_search(root, steps=5), run_id="changed")
    fresh = toy.read_log(log)[3:]
    assert [step for _, step in fresh] == [1, 2, 3, 4, 5] and fresh[0][0] != work
    assert not os.path.exists(fresh[0][0]) and os.path.isdir(work)  # done: removed; other kept
    assert toy.read_values(changed.output("search", "models")) == [5.0]
    # The step says why it starts afresh, as the local runner does, and names the kept folder.
    assert (f"[search] note: an unfinished earlier attempt of this step ({work}) had other "
            f"settings or code, so it cannot be continued: the step starts afresh"
            in capsys.readouterr().out)

    resumed = run_kfp_local(toy.build_search(root, steps=4), run_id="again")
    assert toy.read_log(log)[8:] == [(work, 3), (work, 4)]         # steps 1-2 were reused
    out = capsys.readouterr().out
    assert f"[search] continuing from {work}" in out and "note: an unfinished" not in out
    assert toy.read_values(resumed.output("search", "models")) == [4.0]
    assert not os.path.exists(work)

    # The local runner names the same directory, and finds no cache hits in kfp.local's runs.
    local = LocalRunner(on_progress=lambda e: None).run(toy.build_search(root, steps=4))
    assert {r.state for r in local.components.values()} == {"COMPLETE"}
    assert toy.read_log(log)[10:] == [(work, step) for step in (1, 2, 3, 4)]


def test_a_store_from_before_runners_were_recorded_reads_as_local_runs(tmp_path):
    import sqlite3

    path = str(tmp_path / "metadata.sqlite")
    old = sqlite3.connect(path)                       # the runs table without 'runner'
    with old:
        old.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, pipeline_name TEXT NOT NULL, "
                    "pipeline_root TEXT NOT NULL, status TEXT NOT NULL, start_time REAL NOT NULL, "
                    "end_time REAL, error TEXT, results TEXT NOT NULL DEFAULT '{}')")
        old.execute("INSERT INTO runs (run_id, pipeline_name, pipeline_root, status, start_time) "
                    "VALUES ('old', 'p', '/r', 'COMPLETE', 1.0)")
    old.close()
    with MetadataStore(path) as store:
        store.create_run("new", "p", "/r", runner="kfp-local")
        assert [(r.run_id, r.runner) for r in store.list_runs()] == [("new", "kfp-local"),
                                                                     ("old", "local")]


# ---- the steps' own cache --------------------------------------------------------------------------

def test_step_cache_restores_outputs_while_they_are_unchanged(tmp_path):
    from pipeline import step_cache

    first = {"models": Artifact("TrainedModels", str(tmp_path / "a" / "models"), {"factor": 2.0}),
             "logs": Artifact("TensorBoardLogs", str(tmp_path / "a" / "logs"))}
    os.makedirs(tmp_path / "a" / "models" / "nested")
    os.makedirs(tmp_path / "a" / "logs")
    (tmp_path / "a" / "models" / "nested" / "w.bin").write_bytes(b"12345")
    (tmp_path / "a" / "logs" / "events.txt").write_text("train\n")
    record = step_cache.entry_path(str(tmp_path / "root"), "train", "k" * 64)
    assert record == str(tmp_path / "root" / "train" / ".step-cache" / f"{'k' * 64}.json")
    outside = str(tmp_path / "elsewhere.txt")
    step_cache.remember(record, first, {"tensorboard": first["logs"].uri, "outside": outside,
                                        "weights": first["models"].path("nested", "w.bin")})

    def fresh(name):
        arts = {"models": Artifact("TrainedModels", str(tmp_path / name / "models")),
                "logs": Artifact("TensorBoardLogs", str(tmp_path / name / "logs"))}
        for art in arts.values():
            os.makedirs(art.uri)
        return arts

    second = fresh("b")
    results, reused = step_cache.restore(record, second)
    assert reused == str(tmp_path / "a")
    assert (tmp_path / "b" / "models" / "nested" / "w.bin").read_bytes() == b"12345"
    assert (tmp_path / "b" / "logs" / "events.txt").read_text() == "train\n"
    assert second["models"].properties == {"factor": 2.0} and second["logs"].properties == {}
    assert results == {"tensorboard": second["logs"].uri, "outside": outside,
                       "weights": second["models"].path("nested", "w.bin")}
    # The record now names the newest copy: the first run's directories can go.
    shutil.rmtree(tmp_path / "a")
    third = fresh("c")
    assert step_cache.restore(record, third)[1] == str(tmp_path / "b")
    assert (tmp_path / "c" / "models" / "nested" / "w.bin").read_bytes() == b"12345"

    # Changed files, other outputs, the step's own directories or a broken record: no reuse,
    # and nothing is left in the outputs.
    (tmp_path / "c" / "logs" / "events.txt").write_text("changed\n")
    fourth = fresh("d")
    assert step_cache.restore(record, fourth) is None
    assert os.listdir(fourth["models"].uri) == [] and fourth["models"].properties == {}
    step_cache.remember(record, third, {})
    assert step_cache.restore(record, {"models": fourth["models"]}) is None
    assert step_cache.restore(record, third) is None
    with open(record, "w") as f:
        f.write("{not json")
    assert step_cache.restore(record, fourth) is None
    assert step_cache.restore(str(tmp_path / "missing.json"), fourth) is None


def _run_train_step(tmp_path, name: str, resume_root: str, cache: bool):
    """`kfp_entry.run_step` of the toy trainer in this process, as KFP would call it."""
    from types import SimpleNamespace

    src = tmp_path / "src"
    if not src.exists():
        src.mkdir()
        (src / "values.json").write_text("[1.0, 2.0]")
    meta = {kfp_entry.PROPERTIES_KEY: json.dumps({"count": 2}), kfp_entry.FINGERPRINT_KEY: "f" * 64}
    artifacts = {"examples": SimpleNamespace(path=str(src), uri=str(src), metadata=meta)}
    for output in ("models", "logs"):
        out = str(tmp_path / name / output)
        artifacts[output] = SimpleNamespace(path=out, uri=out, metadata={})
    plan = {"component_id": "train", "component_type": "kfp_toy_components.Train",
            "executor": "kfp_toy_components.TrainExecutor", "spec": "kfp_toy_components.TrainSpec",
            "cache": cache, "inputs": {"examples": {"type_name": "Examples", "args": ["examples"]}},
            "outputs": {"models": {"type_name": "TrainedModels", "arg": "models",
                                   "kfp_type": "Model", "publish_as": None},
                        "logs": {"type_name": "TensorBoardLogs", "arg": "logs",
                                 "kfp_type": "Artifact", "publish_as": "tensorboard"}}}
    kfp_entry.run_step(json.dumps(plan), artifacts, json.dumps({"factor": 3.0, "fail": False}),
                       resume_root)
    return artifacts


def test_a_step_reuses_its_finished_outputs_only_with_caching_on(tmp_path, capsys):
    root = str(tmp_path / "root")
    first = _run_train_step(tmp_path, "one", root, cache=True)
    assert "[train] running kfp_toy_components.TrainExecutor" in capsys.readouterr().out
    second = _run_train_step(tmp_path, "two", root, cache=True)
    out = capsys.readouterr().out
    assert f"[train] {kfp_entry.CACHED_MARK} reusing the outputs of an earlier run" in out
    assert "running" not in out
    assert json.load(open(tmp_path / "two" / "models" / "values.json")) == [3.0, 6.0]
    for key in (kfp_entry.TYPE_KEY, kfp_entry.PROPERTIES_KEY, kfp_entry.FINGERPRINT_KEY):
        assert second["models"].metadata[key] == first["models"].metadata[key]
    assert json.loads(second["logs"].metadata[kfp_entry.RESULTS_KEY]) == {
        "tensorboard": str(tmp_path / "two" / "logs")}
    # Caching off (the pipeline's or this step's): the executor runs.
    _run_train_step(tmp_path, "three", root, cache=False)
    assert "[train] running" in capsys.readouterr().out
    # No resume root: nowhere to keep a cache.
    _run_train_step(tmp_path, "four", "", cache=True)
    assert "[train] running" in capsys.readouterr().out


def test_a_step_that_cannot_continue_an_earlier_attempt_says_so_and_keeps_it(tmp_path, capsys):
    from pipeline.local_runner import resume_dir_for

    root = str(tmp_path / "root")
    older, stale = resume_dir_for(root, "train", "0" * 64), resume_dir_for(root, "train", "1" * 64)
    for path, age in ((older, 100), (stale, 0)):              # unfinished work of other keys
        os.makedirs(path)
        with open(os.path.join(path, "state.json"), "w") as f:
            f.write("{}")
        os.utime(path, (os.path.getmtime(path) - age,) * 2)
    os.makedirs(resume_dir_for(root, "train", "2" * 64))       # empty: nothing unfinished
    _run_train_step(tmp_path, "one", root, cache=False)
    out = capsys.readouterr().out
    assert (f"[train] note: an unfinished earlier attempt of this step ({stale} and 1 more "
            f"beside it) had other settings or code, so it cannot be continued: the step starts "
            f"afresh (delete that folder to free its space, or go back to the earlier settings "
            f"to continue it)") in out
    assert out.index("note: an unfinished") < out.index("[train] complete")
    # Left in place, as the local runner leaves it: the only copy of that work.
    assert os.path.isfile(os.path.join(stale, "state.json"))
    assert os.path.isfile(os.path.join(older, "state.json"))


def test_the_unusable_attempt_note_is_silent_when_there_is_nothing_to_say(tmp_path, capsys):
    own = str(tmp_path / "train" / ".resume" / "a")
    assert kfp_entry.note_unusable_attempts("train", own) is None        # no folders at all
    other = tmp_path / "train" / ".resume" / "b"
    other.mkdir(parents=True)
    (other / "state.json").write_text("{}")
    os.makedirs(own)
    with open(os.path.join(own, "state.json"), "w") as f:
        f.write("{}")
    assert kfp_entry.note_unusable_attempts("train", own) is None        # this attempt continues
    shutil.rmtree(own)
    assert "starts afresh" in kfp_entry.note_unusable_attempts("train", own)
    assert f"({other})" in capsys.readouterr().out


def test_compiled_steps_carry_the_caching_choice(tmp_path):
    def step_caching(doc, component_id):
        source = " ".join(executor_of(doc, component_id)["command"])
        plan = re.search(r"run_step\('(\{.*?\})'", source).group(1)
        return json.loads(plan)["cache"]

    doc = compile_to_dict(toy.build(tmp_path / "r"), tmp_path / "p.yaml")
    assert step_caching(doc, "source") is True and step_caching(doc, "train_a") is True
    pipeline = toy.build(tmp_path / "r")
    pipeline.enable_cache = False                      # off for the pipeline, on for one step
    doc = compile_to_dict(pipeline, tmp_path / "p.yaml", resources={"train_a": {"caching": True}})
    assert step_caching(doc, "source") is False and step_caching(doc, "train_a") is True


def test_kfp_local_reuses_the_finished_steps_of_earlier_runs(tmp_path):
    root = tmp_path / "root"
    with pytest.raises(PipelineError, match="train_b"):
        run_kfp_local(toy.build(root, n=4, fail_b=True), run_id="k1")
    second = run_kfp_local(toy.build(root, n=4), run_id="k2")

    def states(run_id):
        with MetadataStore(str(root / "metadata.sqlite")) as store:
            return {e.component_id: (e.state, e.cached_from) for e in store.executions(run_id)}

    # kfp.local may run train_a before or after train_b fails: what finished is reused.
    finished = {cid: (e.id if e.state == "COMPLETE" else None)
                for cid, e in _executions(root, "k1").items()}
    assert finished["source"] and finished["train_b"] is None and "evaluate" not in finished
    expected = {cid: ("CACHED", finished[cid]) if finished.get(cid) else ("COMPLETE", None)
                for cid in ("source", "train_a", "train_b", "evaluate")}
    assert states("k2") == expected
    doc = json.load(open(root / "run.json"))
    assert {cid: c["state"] for cid, c in doc["components"].items()} == {
        cid: state.lower() for cid, (state, _) in expected.items()}
    # The reused outputs are copies in this run's own directories, properties and all.
    train_a = second.output("train_a", "models")
    assert train_a.uri.startswith(second.kfp_root + os.sep)
    assert toy.read_values(train_a) == [2.0, 4.0, 6.0, 8.0] and train_a.properties == {"factor": 2.0}
    assert second.output("source", "examples").properties == {"count": 4, "splits": ["train"]}
    summary = json.load(open(second.results["summary"]))
    assert summary == {"label": "toy run", "totals": [20.0, 100.0], "factors": [2.0, 10.0]}

    # A reused output whose files changed is not reused again: that step and its consumers run.
    os.remove(second.results["summary"])
    third = run_kfp_local(toy.build(root, n=4), run_id="k3")
    assert {cid: state for cid, (state, _) in states("k3").items()} == {
        "source": "CACHED", "train_a": "CACHED", "train_b": "CACHED", "evaluate": "COMPLETE"}
    assert json.load(open(third.results["summary"])) == summary
    assert third.results["summary"].startswith(third.kfp_root + os.sep)


def _executions(root, run_id):
    with MetadataStore(str(root / "metadata.sqlite")) as store:
        return {e.component_id: e for e in store.executions(run_id)}


def test_a_step_cache_record_that_cannot_be_written_costs_only_the_cache(tmp_path, capsys):
    from pipeline import step_cache

    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "blocked").write_text("a file where the cache directory would go")
    record = str(tmp_path / "blocked" / "train" / ".step-cache" / "k.json")
    assert step_cache.remember(record, {"models": Artifact("TrainedModels", str(out))}, {}) is False
    assert "not recorded for later runs" in capsys.readouterr().out
    assert step_cache.restore(record, {"models": Artifact("TrainedModels", str(tmp_path / "o2"))}) is None


def test_a_step_computes_its_cache_key_without_importing_tensorflow():
    # A step whose outputs come from the step cache needs only its key: importing Keras and
    # TensorFlow for it (5 s) would be most of a cached step's time.
    import subprocess
    import sys

    from components.base import executor_path
    from pipeline import config, dag

    steps = [{"executor": executor_path(c.EXECUTOR_CLASS), "properties": c.exec_properties,
              "spec": f"{c.SPEC_CLASS.__module__}.{c.SPEC_CLASS.__qualname__}"}
             for c in dag.create_pipeline(config.preset("demo", {})).components]
    code = """
import json, sys
from pipeline.kfp_entry import load_executor_class, load_spec_class
for step in json.loads(sys.argv[1]):
    executor = load_executor_class(step["executor"])
    load_spec_class(step["spec"])
    assert executor.code_version().startswith("source:")
    executor.external_fingerprint(step["properties"])
print(sorted(name for name in ("tensorflow", "keras", "keras_tuner") if name in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", code, json.dumps(steps, default=str)], capture_output=True,
                          text=True, timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(steps) == 7 and done.stdout.strip() == "[]"


def test_kfp_output_filter_keeps_the_steps_lines_and_warnings_only():
    from pipeline.kubeflow import _KfpOutputFilter

    lines = [
        ("15:08:03.404 - INFO - Executing task \x1b[96m'tuner'\x1b[0m", True),
        ("    [KFP Executor 2026-12-05 15:08:03,450 INFO]: Got executor_input:", False),
        ("    {", False), ('        "inputs": {', False), ("        }", False), ("    }", False),
        ("    [tuner] running components.tuner.TunerExecutor", True),
        ("    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR", False),
        ("    I0000 00:00:1796483277.506783   16104 port.cc:153] oneDNN custom operations are on.", False),
        ("    [KFP Executor 2026-12-05 15:08:01,733 INFO]: Converting string literal type hint", False),
        ("    [KFP Executor 2026-12-05 15:10:02,159 WARNING]: the disk is nearly full", True),
        ("    [tuner] complete", True),
        ("15:08:03.402 - INFO - Task \x1b[96m'tuner'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m", True),
        ("15:08:03.403 - INFO - Task \x1b[96m'tuner'\x1b[0m outputs:", False),
        ("    results: Dataset( name='results',", False),
        ("                      uri='/tmp/x')", False),
        ("-" * 80, True),
        ("Traceback (most recent call last):", True),
        ("ValueError: bad", True),
    ]
    keep = _KfpOutputFilter()
    assert [line for line, _ in lines if keep(line)] == [line for line, shown in lines if shown]


def test_kfp_locals_colours_reach_a_terminal_but_not_a_file():
    import io

    from pipeline.kubeflow import _Tail

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    line = "Task \x1b[96m'reporter'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m\n"
    for stream, expected in ((io.StringIO(), "Task 'reporter' finished with status SUCCESS\n"), (Terminal(), line)):
        tail = _Tail(stream, log=io.StringIO(), show=lambda text: True)
        tail.write(line)
        assert stream.getvalue() == expected
