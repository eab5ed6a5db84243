"""Reporter: the run's report (Markdown + self-contained HTML) and its TensorBoard log directory.

Gathers what the other components produced: the evaluation, every final run, the search trials and
evolution history, plots of each function's shape, and the configuration needed to reproduce the
run. The TensorBoard directory holds the HParams dashboard (activation expression as a
hyper-parameter, accuracies as metrics) over search trials and final runs, the Keras curves of every
final run, images of the function shapes and the evolution progress: one `tensorboard --logdir`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from components.base import BaseExecutor, Component, ComponentSpec, InputSpec, OutputSpec, Parameter
from components.trainer import learned_parameter_statistics, read_runs


class ReporterSpec(ComponentSpec):
    INPUTS = {
        "evaluation": InputSpec("Evaluation"),
        "trained_models": InputSpec("TrainedModels"),
        "search_results": InputSpec("SearchResults", optional=True),
        "exported": InputSpec("ExportedActivation", optional=True),
        "examples": InputSpec("Examples", optional=True,
                              doc="its statistics.json gives the report's Data section (and the images skipped as corrupt)"),
    }
    OUTPUTS = {
        "report": OutputSpec("Report"),
        "tensorboard": OutputSpec("TensorBoardLogs", publish_as="tensorboard"),
    }
    PARAMETERS = {
        "config": Parameter(dict, default={}, doc="the run's configuration, shown for reproduction"),
        "title": Parameter(str, default="Activation function search"),
        "command": Parameter(str, default="", doc="the shell command that recreates the run"),
    }


class ReporterExecutor(BaseExecutor):
    def Do(self, input_dict, output_dict, exec_properties) -> None:  # noqa: N802
        from components.report import write_report
        from components.tuner import read_history, read_trials

        trained = input_dict["trained_models"][0]
        runs = read_runs(trained)
        evaluation_path = os.path.join(input_dict["evaluation"][0].uri, "evaluation.json")
        from components.statistics import Evaluation

        with open(evaluation_path) as f:
            evaluation = Evaluation.from_json(f.read())
        history = trials = None
        if input_dict.get("search_results"):
            search = input_dict["search_results"][0]
            history = [dict(row, distinct=row.get("distinct_fingerprints")) for row in read_history(search)
                       if row.get("best") is not None]
            trials = [t for t in read_trials(search) if t.get("fitness") is not None]

        report, logdir = output_dict["report"][0], output_dict["tensorboard"][0]
        # The plots are drawn outside the report: write_report copies them into its figures
        # directory, and a second copy under report/ was byte for byte the same.
        with tempfile.TemporaryDirectory(prefix="function-plots-") as plots_dir:
            plots = draw_function_plots(evaluation, runs, plots_dir)
            notes = [note for note in (trained.properties.get("shortfall_note"),
                                       trained.properties.get("lost_runs_note")) if note]
            _, html_path = write_report(report.uri, evaluation=evaluation, runs=runs, history=history, trials=trials,
                                        function_plots=plots, config=dict(exec_properties["config"]),
                                        title=exec_properties["title"], command=exec_properties["command"],
                                        exported=read_exported(input_dict), data=read_data(input_dict),
                                        notes=notes or None)
            self.context.register_result("report", str(html_path))
            self.context.register_result("report_markdown", report.path("report.md"))
            self._write_tensorboard(logdir.uri, trained.uri, runs, trials, history, plots,
                                    (exec_properties.get("config") or {}).get("strategy"))
        self.context.progress(f"report written: {os.path.basename(html_path)}, report.md and {len(plots)} "
                              "function plots")

    @staticmethod
    def _write_tensorboard(logdir: str, trained_uri: str, runs: list[dict], trials: list[dict] | None,
                           history: list[dict] | None, plots: dict[str, str], strategy: str | None = None) -> None:
        """HParams, function images, evolution and each final run's own Keras logs under `logdir`."""
        from components import tb_summaries

        # A final run's own Keras logs (`train/`, `validation/`, histograms, layer images) are
        # copied under its run; its curves are written from the history only when it has none,
        # so TensorBoard does not show each curve twice.
        keras_logs = {index: os.path.join(trained_uri, run["run_dir"], "logs") for index, run in enumerate(runs)}
        keras_logs = {index: path for index, path in keras_logs.items() if os.path.isdir(path)}
        tb_runs = [{k: v for k, v in run.items() if k != "history"} if index in keras_logs else run
                   for index, run in enumerate(runs)]
        tb_summaries.write_hparams(logdir, tb_runs, trials or None)
        tb_summaries.write_function_images(logdir, plots)
        if history:
            tb_summaries.write_evolution(logdir, history, strategy=strategy)
        for index, path in keras_logs.items():
            run = runs[index]
            target = os.path.join(logdir, tb_summaries.final_run_name(run["function"], run["seed"]))
            shutil.copytree(path, target, dirs_exist_ok=True)


def draw_function_plots(evaluation, runs: list[dict], plots_dir: str) -> dict[str, str]:
    """{function: PNG of its shape and derivative}, drawn at the mean learned parameters."""
    import activations

    plots = {}
    for index, stats in enumerate(evaluation.functions):
        path = os.path.join(plots_dir, f"function_{index}.png")
        learned = learned_parameter_statistics([run for run in runs if run["function"] == stats.function])
        activations.plot(stats.function, path, parameters={name: values["mean"] for name, values in learned.items()})
        plots[stats.function] = path
    return plots


def read_data(input_dict) -> dict | None:
    """The Examples' statistics.json for the report's Data section; None when the input is not
    wired (the report then has no such section). An unreadable file fails the step, as it did
    when only the skipped files were read from it: the report must not quietly drop the data."""
    if not input_dict.get("examples"):
        return None
    from components.example_gen import read_statistics

    return read_statistics(input_dict["examples"][0])


def read_exported(input_dict) -> dict | None:
    """What the report says of the export: activation.json's `evaluation` entry, and the seed
    whose model export/model.keras holds (`model_seed`; None: no model was saved), so the report
    names it instead of hedging."""
    if not input_dict.get("exported"):
        return None
    with open(os.path.join(input_dict["exported"][0].uri, "activation.json")) as f:
        record = json.load(f)
    return {**(record.get("evaluation") or {}), "model_seed": record.get("model_seed")}


class Reporter(Component):
    SPEC_CLASS = ReporterSpec
    EXECUTOR_CLASS = ReporterExecutor
