"""Toy components for the Kubeflow tests, in a module of their own so that the step
subprocesses started by kfp.local can import their executors by path.

The DAG built by `build`: ``source`` (Examples) feeds two trainers (TrainedModels plus
TensorBoardLogs), whose models fan in to ``evaluate`` (Evaluation, published as
"evaluation", with a registered "summary" result). Values are small lists of numbers in JSON.
`build_search`: ``source`` feeds ``search``, long work kept step by step in its resume
directory. Executors have a fixed VERSION: hashing their module's imports would import
TensorFlow in every step (the module imports `pipeline.dag`), which is slow and tests nothing.
"""

from __future__ import annotations

import json
import os
import signal

from components.base import (Artifact, BaseExecutor, Component, ComponentSpec, InputSpec,
                             OutputSpec, Parameter)
from pipeline.dag import Pipeline


def read_values(artifact: Artifact) -> list[float]:
    with open(artifact.path("values.json")) as f:
        return json.load(f)


def write_values(artifact: Artifact, values: list[float]) -> None:
    with open(artifact.path("values.json"), "w") as f:
        json.dump(values, f)


class SourceSpec(ComponentSpec):
    OUTPUTS = {"examples": OutputSpec("Examples")}
    PARAMETERS = {"n": Parameter(int, default=3)}


class SourceExecutor(BaseExecutor):
    VERSION = "1"

    def Do(self, input_dict, output_dict, exec_properties):
        out = output_dict["examples"][0]
        write_values(out, [float(i) for i in range(1, exec_properties["n"] + 1)])
        out.properties.update(count=exec_properties["n"], splits=["train"])


class Source(Component):
    SPEC_CLASS, EXECUTOR_CLASS = SourceSpec, SourceExecutor


class TrainSpec(ComponentSpec):
    INPUTS = {"examples": InputSpec("Examples"),
              "warm_start": InputSpec("TrainedModels", optional=True)}
    OUTPUTS = {"models": OutputSpec("TrainedModels"),
               "logs": OutputSpec("TensorBoardLogs", publish_as="tensorboard")}
    PARAMETERS = {"factor": Parameter(float, default=2.0),
                  "fail": Parameter(bool, default=False)}


class TrainExecutor(BaseExecutor):
    VERSION = "1"

    def Do(self, input_dict, output_dict, exec_properties):
        examples = input_dict["examples"][0]
        values = read_values(examples)
        count = examples.properties["count"]
        if not isinstance(count, int) or count != len(values):   # properties travel exactly
            raise RuntimeError(f"bad input properties {examples.properties!r}")
        self.context.progress("training", done=1, total=2)
        if exec_properties["fail"]:
            raise RuntimeError(f"training failed on purpose in {self.context.component_id}")
        write_values(output_dict["models"][0], [v * exec_properties["factor"] for v in values])
        output_dict["models"][0].properties["factor"] = exec_properties["factor"]
        with open(output_dict["logs"][0].path("events.txt"), "w") as f:
            f.write(f"{self.context.component_id}\n")


class Train(Component):
    SPEC_CLASS, EXECUTOR_CLASS = TrainSpec, TrainExecutor


class EvaluateSpec(ComponentSpec):
    INPUTS = {"models": InputSpec("TrainedModels")}
    OUTPUTS = {"evaluation": OutputSpec("Evaluation", publish_as="evaluation")}
    PARAMETERS = {"label": Parameter(str, default="toy")}


class EvaluateExecutor(BaseExecutor):
    VERSION = "1"

    def Do(self, input_dict, output_dict, exec_properties):
        totals = [sum(read_values(a)) for a in input_dict["models"]]
        factors = [a.properties["factor"] for a in input_dict["models"]]
        out = output_dict["evaluation"][0]
        summary = out.path("summary.json")
        with open(summary, "w") as f:
            json.dump({"label": exec_properties["label"], "totals": totals,
                       "factors": factors}, f)
        out.properties.update(best=max(totals), blessed=True, label=exec_properties["label"])
        self.context.register_result("summary", summary)


class Evaluate(Component):
    SPEC_CLASS, EXECUTOR_CLASS = EvaluateSpec, EvaluateExecutor


def build(root: str | os.PathLike, *, n: int = 3, fail_b: bool = False,
          name: str = "kfp_toy") -> Pipeline:
    source = Source(n=n)
    train_a = Train(component_id="train_a", examples=source.outputs["examples"], factor=2.0)
    train_b = Train(component_id="train_b", examples=source.outputs["examples"], factor=10,
                    fail=fail_b)
    evaluate = Evaluate(models=[train_a.outputs["models"], train_b.outputs["models"]],
                        label="toy run")
    return Pipeline(name, [evaluate, train_b, train_a, source], root)


class SearchSpec(ComponentSpec):
    INPUTS = {"examples": InputSpec("Examples")}
    OUTPUTS = {"models": OutputSpec("TrainedModels")}
    PARAMETERS = {"steps": Parameter(int, default=4)}


class SearchExecutor(BaseExecutor):
    """Counts to `steps`, saving each step in its resume directory, so a re-run continues.

    Every step it computes appends ``<resume_dir> <step>`` to the file $TOY_LOG.
    TOY_STOP_AT=<step> stops it at that step (before saving it): it raises RuntimeError, or,
    with TOY_INTERRUPT_PID set, sends SIGINT to that process first and raises
    KeyboardInterrupt, as Ctrl-C reaches both the runner and its step.
    """

    VERSION = "1"

    def Do(self, input_dict, output_dict, exec_properties):
        work = self.context.resume_dir
        state = os.path.join(work, "done.json")
        done = json.load(open(state)) if os.path.exists(state) else 0
        for step in range(done + 1, exec_properties["steps"] + 1):
            with open(os.environ["TOY_LOG"], "a") as f:
                f.write(f"{work} {step}\n")
            if os.environ.get("TOY_STOP_AT") == str(step):
                _stop(step)
            with open(state, "w") as f:
                json.dump(step, f)
        write_values(output_dict["models"][0], [float(exec_properties["steps"])])
        output_dict["models"][0].properties["factor"] = 1.0


def _stop(step: int) -> None:
    pid = os.environ.get("TOY_INTERRUPT_PID")
    if pid:
        os.kill(int(pid), signal.SIGINT)
        raise KeyboardInterrupt
    raise RuntimeError(f"stopped at step {step}")


class Search(Component):
    SPEC_CLASS, EXECUTOR_CLASS = SearchSpec, SearchExecutor


def build_search(root: str | os.PathLike, *, steps: int = 4) -> Pipeline:
    source = Source(n=2)
    return Pipeline("kfp_search", [source, Search(examples=source.outputs["examples"],
                                                  steps=steps)], root)


def read_log(path: str | os.PathLike) -> list[tuple[str, int]]:
    """(resume directory, step) for every step a SearchExecutor computed."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [(work, int(step)) for work, step in
                (line.rstrip("\n").rsplit(" ", 1) for line in f)]
