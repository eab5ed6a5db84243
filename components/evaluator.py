"""Evaluator: compares every trained function with ReLU and blesses the ones that truly win.

Reads the final training runs (several seeds per function, same data and budget), computes the
statistics of `components.statistics.evaluate` (mean, spread, 95% CI, Welch and Mann-Whitney
against the baseline, Holm correction, win/tie/loss) and writes, as in TFX, `evaluation.json`
plus a `BLESSED` or `NOT_BLESSED` marker file.
"""

from __future__ import annotations

from components.base import BaseExecutor, Component, ComponentSpec, InputSpec, OutputSpec, Parameter
from components.statistics import evaluate, write_evaluation
from components.trainer import read_runs


class EvaluatorSpec(ComponentSpec):
    INPUTS = {"trained_models": InputSpec("TrainedModels")}
    OUTPUTS = {"evaluation": OutputSpec("Evaluation", publish_as="evaluation")}
    PARAMETERS = {
        "baseline": Parameter(str, default="relu"),
        "threshold": Parameter(float, default=0.0, doc="minimum mean gain over the baseline"),
        "alpha": Parameter(float, default=0.05, doc="significance level of the corrected test"),
        "min_seeds": Parameter(int, default=3, doc="fewer runs than this: no test, said plainly"),
    }


class EvaluatorExecutor(BaseExecutor):
    def Do(self, input_dict, output_dict, exec_properties) -> None:  # noqa: N802
        runs = read_runs(input_dict["trained_models"][0], include_lost=True)  # `evaluate` leaves them out, by name
        p = exec_properties
        evaluation = evaluate(
            runs, baseline=p["baseline"], threshold=p["threshold"], alpha=p["alpha"], min_seeds=p["min_seeds"]
        )
        out = output_dict["evaluation"][0]
        write_evaluation(out.uri, evaluation)
        winner = evaluation.winner
        out.properties.update({"verdict": evaluation.verdict, "winner": winner.function if winner else None,
                               "gain": winner.diff if winner else None})
        self.context.progress(evaluation.summary)


class Evaluator(Component):
    SPEC_CLASS = EvaluatorSpec
    EXECUTOR_CLASS = EvaluatorExecutor
