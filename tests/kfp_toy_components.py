"""Toy components for the Kubeflow tests, in a module of their own so that the step
subprocesses started by kfp.local can import their executors by path.

The DAG built by `build`: ``source`` (Examples) feeds two trainers (TrainedModels plus
TensorBoardLogs), whose models fan in to ``evaluate`` (Evaluation, published as
"evaluation", with a registered "summary" result). Values are small lists of numbers in JSON.
"""

from __future__ import annotations

import json
import os

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
