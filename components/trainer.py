"""Trainer: trains the search's top functions and the baselines at the full budget, several seeds each.

Every (function, seed) pair is one job of `components.training_job.train_job`, fanned out through
Beam (`components.fanout`). Jobs write into the component's resume directory, so a Trainer that
was stopped re-runs only the runs that did not finish (and a run stopped mid-way continues from
its last epoch through the trainer's own backup).

Artifact layout::

    <uri>/runs.jsonl                  one record per run (function, seed, accuracies, divergence,
                                      learned parameters, history, paths relative to <uri>); a run
                                      whose process died (`lost`) is kept here but left out by
                                      `read_runs`, so it never enters the statistics
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
from components.fanout import retry_note, run_jobs


class TrainerSpec(ComponentSpec):
    INPUTS = {
        "examples": InputSpec("Examples"),
        "search_results": InputSpec("SearchResults", optional=True, doc="its top_k functions are trained"),
    }
    OUTPUTS = {"trained_models": OutputSpec("TrainedModels")}
    PARAMETERS = {
        "train_config": Parameter(dict, doc="trainer.train.TrainConfig fields shared by every run"),
        # Runs are named by function and seed: an interrupted step keeps the finished ones
        # when functions or seeds are added or removed.
        "baselines": Parameter(list, default=["relu", "swish", "gelu"], in_resume_key=False),
        "functions": Parameter(list, default=[], doc="further expressions to train", in_resume_key=False),
        "top_k": Parameter(int, default=3, in_resume_key=False),
        "seeds": Parameter(int, default=3, in_resume_key=False),
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
    search that are not the same function as a baseline, then extra expressions. Every baseline
    the search also ranked says so in its origin ("the search's rank N", wherever N is, also
    below the top-k), as it is trained once, as the baseline.

    A search result is trained in its simplest form (`activations.simplify`: no dead terms or
    parameters), which is the function users get; `searched_as` keeps the search's spelling."""
    import activations
    from activations.named import expression_for, known_equivalent

    chosen = [{"function": name, "kind": "baseline", "origin": "baseline"} for name in baselines]
    seen = {activations.fingerprint(expression_for(name)) for name in baselines}
    baseline_of = dict(zip((activations.fingerprint(expression_for(name)) for name in baselines), chosen))
    for rank, item in enumerate(top, 1):
        fingerprint = item.get("fingerprint") or activations.fingerprint(item["expression"])
        found = baseline_of.pop(fingerprint, None)
        if found is not None:  # trained once, as the baseline; the report says the search found it
            found["origin"] += f"; also the search's rank {rank} ({search_origin(item)})"
        if sum(1 for c in chosen if c["kind"] == "discovered") >= top_k:
            continue  # the shortlist is full; later items may still be baselines to annotate
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


def shortfall_note(functions: list[dict], top_k: int, *, for_report: bool = False) -> str:
    """A note when the search gave fewer distinct functions than top_k asks for (else ""): for
    the terminal while training, or (`for_report`) as a sentence for the report, which a reader
    who did not watch the terminal would otherwise miss."""
    discovered = sum(1 for f in functions if f["kind"] == "discovered")
    if discovered >= top_k:
        return ""
    found = f"{discovered} distinct function{'' if discovered == 1 else 's'} besides the baselines"
    if for_report:
        trained = "none" if not discovered else "it" if discovered == 1 else "those"
        return (f"top_k={top_k} asked for the search's {top_k} best functions, but the search found only "
                f"{found}; the final runs trained {trained}.")
    return f"note: top_k={top_k}, but the search found {found}; training those"


def run_record(function: Mapping[str, str], seed: int, result: Mapping[str, Any], run_dir: str) -> dict[str, Any]:
    """The per-run record the Evaluator, Exporter and report read.

    A run that raised counts as diverged (at chance level in the statistics: the function could
    not be trained). A run the fan-out wrote off because its process died at each start (out of
    memory, killed) is `lost` instead: that says nothing about the function, and scoring it at
    chance turned a 0.98 ReLU seed into 0.1 and could flip the verdict."""
    failed = bool(result.get("failed"))
    lost = failed and bool(result.get("process_died"))
    stats = result.get("activation_stats") or {}
    return {
        "function": function["function"],
        "kind": function["kind"],
        "origin": function.get("origin", function["kind"]),
        "searched_as": function.get("searched_as"),
        "seed": seed,
        "test_accuracy": None if failed else result.get("test_accuracy"),
        "val_accuracy": None if failed else result.get("best_val_accuracy"),
        "diverged": (failed and not lost) or bool(result.get("diverged")),
        "divergence_reason": None if lost else result.get("error") if failed else result.get("divergence_reason"),
        "lost": lost,
        "lost_reason": result.get("error") if lost else None,
        "num_classes": result.get("num_classes"),
        "learned_parameters": {
            layer: {name: parameter_summary(values) for name, values in params.items()}
            for layer, params in stats.items()
        },
        "history": result.get("history") or {},
        "images_per_sec": result.get("images_per_sec"),
        "train_time": result.get("train_time"),
        "precision": result.get("precision"),
        "run_dir": run_dir,
        "model_path": os.path.join(run_dir, "model.keras") if result.get("model_path") else None,
    }


SUMMARY_KEYS = ("mean", "std", "min", "max", "size")
"""What a run keeps of each layer's parameter (`trainer.callbacks.activation_parameter_stats`)."""


def parameter_summary(values: Any) -> dict[str, float] | None:
    """One layer's parameter as the run record keeps it: mean, std, min, max over its channels
    and their number (`size`). The min and max are kept because with per-channel sharing the
    layer mean hides the spread the report draws; a bare number (a record written before they
    were kept) reads as a layer of one value. None: nothing finite to keep."""
    if isinstance(values, Mapping):
        summary = {key: float(values[key]) for key in SUMMARY_KEYS if _is_finite(values.get(key))}
        if "mean" not in summary:
            return None
        summary.setdefault("min", summary["mean"])
        summary.setdefault("max", summary["mean"])
        return summary
    if _is_finite(values):
        return {"mean": float(values), "min": float(values), "max": float(values)}
    return None


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


LEARNED_STATISTICS_NOTE = (
    "per parameter: mean (where activations.load starts every layer) and std_of_layer_means over the per-layer "
    "means of every activation layer of every final run; min and max over every learned value (all channels of "
    "all layers and runs); values counts those, layers the activation layers, seeds the final runs")
"""What `learned_parameter_statistics` covers, written beside it into activation.json."""


def learned_parameter_statistics(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per parameter (`LEARNED_STATISTICS_NOTE` says it in the file): the mean and spread of the
    per-layer means, the min and max over every channel value, and what was counted (values,
    layers, seeds) named as such; before, min/max/count covered only layer means, so a layer
    spanning 0.97-1.03 over 64 channels showed as one number."""
    summaries: dict[str, list[tuple[str, int, dict[str, float]]]] = {}
    for index, run in enumerate(runs):
        for layer, params in (run.get("learned_parameters") or {}).items():
            for name, value in params.items():
                summary = parameter_summary(value)
                if summary is not None:
                    summaries.setdefault(name, []).append((layer, index, summary))
    return {name: _parameter_statistics(entries) for name, entries in summaries.items()}


def _parameter_statistics(entries: list[tuple[str, int, dict[str, float]]]) -> dict[str, float]:
    means = [summary["mean"] for _, _, summary in entries]
    return {
        "mean": statistics.fmean(means),
        "std_of_layer_means": statistics.pstdev(means),
        "min": min(summary["min"] for _, _, summary in entries),
        "max": max(summary["max"] for _, _, summary in entries),
        "values": sum(int(summary.get("size", 1)) for _, _, summary in entries),
        "layers": len({layer for layer, _, _ in entries}),
        "seeds": len({run for _, run, _ in entries}),
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
        report_note = shortfall_note(functions, p["top_k"], for_report=True) if top else ""
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
                text += f": failed ({result.get('error')}){retry_note(result)}"
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
        lost = lost_runs_note(records)
        if lost:
            self.context.progress(lost)
        out.properties.update({"num_runs": len(records), "functions": [f["function"] for f in functions],
                               "shortfall_note": report_note,  # for the report, as the terminal showed it
                               "lost_runs_note": lost})


class Trainer(Component):
    SPEC_CLASS = TrainerSpec
    EXECUTOR_CLASS = TrainerExecutor


def lost_runs_note(records: list[Mapping[str, Any]]) -> str:
    """A sentence naming the runs whose process died (left out of the statistics), else ""."""
    lost = [f"{r['function']} seed {r['seed']}" for r in records if r.get("lost")]
    if not lost:
        return ""
    return (f"{len(lost)} run{'' if len(lost) == 1 else 's'} left out of the statistics because the training "
            f"process died at every start (out of memory or killed, not a property of the function): "
            f"{', '.join(lost)}")


def read_runs(trained_models: Artifact | str, include_lost: bool = False) -> list[dict[str, Any]]:
    """The runs of a TrainedModels artifact; without `include_lost`, not the `lost` ones (their
    process died): the Evaluator passes these to the statistics, where a missing accuracy would
    count at chance level as a diverged run does."""
    uri = trained_models.uri if isinstance(trained_models, Artifact) else trained_models
    with open(os.path.join(uri, "runs.jsonl")) as f:
        runs = [json.loads(line) for line in f if line.strip()]
    return runs if include_lost else [run for run in runs if not run.get("lost")]
