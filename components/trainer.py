"""Trainer: trains the search's top functions and the baselines at the full budget, several seeds each.

Every (function, seed) pair is one job of `components.training_job.train_job`, fanned out through
Beam (`components.fanout`). Jobs write into the component's resume directory, so a Trainer that
was stopped re-runs only the runs that did not finish (and a run stopped mid-way continues from
its last epoch through the trainer's own backup).

Artifact layout::

    <uri>/runs.jsonl                  one record per run (function, seed, accuracies, divergence,
                                      learned parameters, history, paths relative to <uri>)
    <uri>/runs/<run id>/              model.keras, TensorBoard logs, history, result.json
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import statistics
from typing import Any, Mapping

from components.base import Artifact, BaseExecutor, Component, ComponentSpec, InputSpec, OutputSpec, Parameter
from components.fanout import run_jobs


class TrainerSpec(ComponentSpec):
    INPUTS = {
        "examples": InputSpec("Examples"),
        "search_results": InputSpec("SearchResults", optional=True, doc="its top_k functions are trained"),
    }
    OUTPUTS = {"trained_models": OutputSpec("TrainedModels")}
    PARAMETERS = {
        "train_config": Parameter(dict, doc="trainer.train.TrainConfig fields shared by every run"),
        "baselines": Parameter(list, default=["relu", "swish", "gelu"]),
        "functions": Parameter(list, default=[], doc="further expressions to train"),
        "top_k": Parameter(int, default=3),
        "seeds": Parameter(int, default=3),
        "parallelism": Parameter(int, default=1, in_cache_key=False),
        "beam_options": Parameter(list, default=[], in_cache_key=False),
    }


def run_id(function: str, seed: int) -> str:
    """A file-system-safe, unique id of a (function, seed) run."""
    import hashlib

    slug = re.sub(r"[^A-Za-z0-9]+", "_", function).strip("_")[:40]
    digest = hashlib.sha1(function.encode()).hexdigest()[:8]
    return f"{slug}-{digest}-seed{seed}"


def search_origin(item: Mapping[str, Any]) -> str:
    """Where a search result came from, in words: a seed function the search started from is
    not a discovery of evolution, and a reader of the results should see that."""
    trial = f"trial {item['trial_id']}" if item.get("trial_id") is not None else "a trial"
    operator = item.get("operator")
    if operator is None:
        return f"search, {trial}"
    kinds = {"seed": "initial candidate", "sample": "random sample", "exhaustive": "enumerated",
             "controller": "RL controller proposal"}
    if operator in kinds:
        origin = f"search {kinds[operator]}, {trial}"
    else:
        origin = f"evolved ({operator}), generation {item.get('generation')}, {trial}"
    if item.get("mean_fitness") is not None:
        origin += (f"; re-ranked by mean validation accuracy {item['mean_fitness']:.4f} over "
                   f"{1 + len(item.get('rerun_fitness') or [])} runs")
    return origin


def functions_to_train(baselines: list[str], top: list[Mapping[str, Any]], top_k: int, extra: list[str]) -> list[dict]:
    """[{function, kind, origin}] : baselines by name, then the top-k distinct functions of the
    search that are not the same function as a baseline, then extra expressions. A baseline
    the search also ranked says so in its origin, as it is trained once.

    A search result is trained in its simplest form (`activations.simplify`: no dead terms or
    parameters), which is the function users get; `searched_as` keeps the search's spelling."""
    import activations
    from activations.named import expression_for, known_equivalent

    chosen = [{"function": name, "kind": "baseline", "origin": "baseline"} for name in baselines]
    seen = {activations.fingerprint(expression_for(name)) for name in baselines}
    baseline_of = dict(zip((activations.fingerprint(expression_for(name)) for name in baselines), chosen))
    for rank, item in enumerate(top, 1):
        if sum(1 for c in chosen if c["kind"] == "discovered") >= top_k:
            break
        fingerprint = item.get("fingerprint") or activations.fingerprint(item["expression"])
        found = baseline_of.pop(fingerprint, None)
        if found is not None:  # trained once, as the baseline; the report says the search found it
            found["origin"] += f"; also the search's #{rank} ({search_origin(item)})"
        if fingerprint not in seen:
            seen.add(fingerprint)
            searched = activations.parse(item["expression"])
            function = str(activations.simplify(searched))
            known = known_equivalent(function)
            alias = f"; the same function as {known}" if known and str(expression_for(known)) != function else ""
            spelling = f"; searched as {searched.infix()}" if str(searched) != function else ""
            chosen.append({"function": function, "kind": "discovered", "origin": search_origin(item) + alias + spelling,
                           "searched_as": str(searched)})
    for text in extra:
        fingerprint = activations.fingerprint(text)
        if fingerprint not in seen:
            seen.add(fingerprint)
            chosen.append({"function": str(activations.parse(text)), "kind": "given", "origin": "given"})
    return chosen


def shortfall_note(functions: list[dict], top_k: int) -> str:
    """A note when the search gave fewer distinct functions than top_k asks for (else "")."""
    discovered = sum(1 for f in functions if f["kind"] == "discovered")
    if discovered >= top_k:
        return ""
    return (f"note: top_k={top_k}, but the search found {discovered} distinct function"
            f"{'' if discovered == 1 else 's'} besides the baselines; training those")


def run_record(function: Mapping[str, str], seed: int, result: Mapping[str, Any], run_dir: str) -> dict[str, Any]:
    """The per-run record the Evaluator, Exporter and report read."""
    failed = bool(result.get("failed"))
    stats = result.get("activation_stats") or {}
    return {
        "function": function["function"],
        "kind": function["kind"],
        "origin": function.get("origin", function["kind"]),
        "searched_as": function.get("searched_as"),
        "seed": seed,
        "test_accuracy": None if failed else result.get("test_accuracy"),
        "val_accuracy": None if failed else result.get("best_val_accuracy"),
        "diverged": failed or bool(result.get("diverged")),
        "divergence_reason": result.get("error") if failed else result.get("divergence_reason"),
        "num_classes": result.get("num_classes"),
        "learned_parameters": {
            layer: {name: values.get("mean") for name, values in params.items()} for layer, params in stats.items()
        },
        "history": result.get("history") or {},
        "images_per_sec": result.get("images_per_sec"),
        "train_time": result.get("train_time"),
        "precision": result.get("precision"),
        "run_dir": run_dir,
        "model_path": os.path.join(run_dir, "model.keras") if result.get("model_path") else None,
    }


def learned_parameter_statistics(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per parameter: mean, std, min, max of the learned values over layers and seeds."""
    values: dict[str, list[float]] = {}
    for run in runs:
        for params in (run.get("learned_parameters") or {}).values():
            for name, value in params.items():
                if value is not None and math.isfinite(value):
                    values.setdefault(name, []).append(float(value))
    return {
        name: {"mean": statistics.fmean(v), "std": statistics.pstdev(v), "min": min(v), "max": max(v), "count": len(v)}
        for name, v in values.items()
    }


class TrainerExecutor(BaseExecutor):
    RUNS = ("components.training_job",)  # each trial / run is a job of train_job

    def Do(self, input_dict, output_dict, exec_properties) -> None:  # noqa: N802
        from components.example_gen import read_statistics
        from components.tuner import read_top

        p = exec_properties
        examples = input_dict["examples"][0]
        top = read_top(input_dict["search_results"][0]) if input_dict.get("search_results") else []
        functions = functions_to_train(p["baselines"], top, p["top_k"], p["functions"])
        note = shortfall_note(functions, p["top_k"]) if top else ""
        if note:
            self.context.progress(note)
        work = self.context.resume_dir
        jobs, plan = [], []
        for function in functions:
            for seed in range(p["seeds"]):
                rid = run_id(function["function"], seed)
                config = {
                    **p["train_config"],
                    "activation": function["function"],
                    "seed": seed,
                    "output_dir": os.path.join(work, "runs", rid),
                    "save_model": True,
                    "quiet": True,
                }
                jobs.append({"id": rid, "fn": "components.training_job:train_job",
                             "args": {"config": config, "examples_uri": examples.uri}})
                plan.append((function, seed, rid))
        self.context.progress(f"training {len(functions)} functions x {p['seeds']} seeds = {len(jobs)} runs")

        def progress(done, total, result):
            if result is None:
                self.context.progress(f"{done} of {total} runs already done by an earlier attempt",
                                      done=done, total=total, already_done=True)
                return
            text = f"run {done} of {total}"
            if result.get("failed"):
                text += f": failed ({result.get('error')})"
            else:
                accuracy = result.get("test_accuracy")
                text += (f": {result.get('config', {}).get('activation')} seed {result.get('config', {}).get('seed')}, "
                         + ("diverged" if accuracy is None else f"test accuracy {accuracy:.4f}"))
            self.context.progress(text, done=done, total=total)

        results = run_jobs(jobs, os.path.join(work, "results"), parallelism=p["parallelism"],
                           beam_options=p["beam_options"], progress=progress)
        out = output_dict["trained_models"][0]
        num_classes = read_statistics(examples)["num_classes"]
        records = []
        for (function, seed, rid), result in zip(plan, results):
            source = os.path.join(work, "runs", rid)
            target = out.path("runs", rid)
            if os.path.isdir(source):
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("backup"))
            record = run_record(function, seed, result, os.path.join("runs", rid))
            # A run that raised has no class count; its failure scores chance level, not zero.
            record["num_classes"] = record["num_classes"] or num_classes
            records.append(record)
        with open(out.path("runs.jsonl"), "w") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")
        out.properties.update({"num_runs": len(records), "functions": [f["function"] for f in functions]})


class Trainer(Component):
    SPEC_CLASS = TrainerSpec
    EXECUTOR_CLASS = TrainerExecutor


def read_runs(trained_models: Artifact | str) -> list[dict[str, Any]]:
    uri = trained_models.uri if isinstance(trained_models, Artifact) else trained_models
    with open(os.path.join(uri, "runs.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]
