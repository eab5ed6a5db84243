"""Tuner: the evolutionary search, one short training run per trial.

The `EvolutionaryOracle` is driven as a batch executor: it proposes a generation of trials
(`propose_batch`), the trials are trained in parallel through Beam (`parallel_trials` workers),
and their validation accuracies go back to the oracle (`report`). With `stop_quantile`, each trial gets the
oracle's stopping bars (`activations.stopping`) computed from the trials that ended before it, and
stops after an epoch below them; its learning curve goes back to the oracle for the next bars.
The oracle keeps its state in
the component's resume directory and every finished trial's result is kept there too, so a search
that was interrupted or crashed continues where it stopped: no finished trial is trained again.

Artifact layout::

    <uri>/trials.jsonl      every trial: id, expression, fingerprint, fitness, status, lineage, time, its
                            per-epoch curves (`history`) and learned parameters (`activation_stats`);
                            records of older searches lack the last two
    <uri>/history.json      per generation: best, median, distinct functions proposed so far (cumulative),
                            duplicates, rejected
    <uri>/top_k.json        the best distinct functions, best first (with `rerank_seeds`: the best
                            2 * top_k re-ranked by `mean_fitness` over their trial and `rerun_fitness`)
    <uri>/counts.json       proposals, duplicates and rejected offspring, completed, failed
    <uri>/tensorboard/      HParams dashboard (activation x fitness), each trial's curves and learned
                            parameters, and evolution curves
"""

from __future__ import annotations

import json
import math
import os
import shutil
import warnings
from collections import Counter
from collections.abc import Mapping
from typing import Any

from components.base import Artifact, BaseExecutor, Component, ComponentSpec, InputSpec, OutputSpec, Parameter
from components.fanout import load_result, retry_note, run_jobs

OBJECTIVE = "val_accuracy"
TRIAL_CURVES = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")
"""The per-epoch values a trial record keeps (its TensorBoard curves); timing and step counts stay
in the trial's own result file."""
MAX_ERRORS_IN_A_ROW = 8
"""Trials in a row whose training raised an error (not diverged) before the search gives up. A search
with fewer trials than that still fails, at its end, when no trial produced a result."""


class TrialsFailingError(RuntimeError):
    """Trial after trial raises instead of training, or no trial of the search produced a result:
    a systematic problem, not a bad candidate."""


class TunerSpec(ComponentSpec):
    INPUTS = {"examples": InputSpec("Examples"), "candidates": InputSpec("Candidates")}
    OUTPUTS = {"search_results": OutputSpec("SearchResults")}
    PARAMETERS = {
        "train_config": Parameter(dict, doc="trainer.train.TrainConfig fields of every trial"),
        "space": Parameter(str, default="pangaea", choices=("pangaea", "swish")),
        "strategy": Parameter(str, default="evolution", choices=("evolution", "random", "exhaustive", "rl")),
        "core_units": Parameter(int, default=None, doc="exhaustive / rl: 1 or 2 (None: 1 for exhaustive, 2 for rl)"),
        "unary_forms": Parameter(list, default=[], doc="exhaustive / rl: the core units' unary forms (empty: all)"),
        "binary_forms": Parameter(list, default=[], doc="exhaustive / rl: the core units' binary forms (empty: all)"),
        # An interrupted search continues under a new budget (the oracle keeps its trials).
        "max_trials": Parameter(int, default=24, in_resume_key=False),
        "population_size": Parameter(int, default=8),
        "tournament_size": Parameter(int, default=3),
        "train_examples": Parameter(int, default=None, doc="cap on training examples per trial"),
        # Kept in the cache key: above 1, trials are proposed a generation at a time.
        "parallel_trials": Parameter(int, default=1),
        "beam_options": Parameter(list, default=[], in_cache_key=False),
        "top_k": Parameter(int, default=3, in_resume_key=False),
        "seed": Parameter(int, default=0),
        "stop_quantile": Parameter(float, default=None,
                                   doc="stop a trial after an epoch below this quantile of earlier trials "
                                       "(activations.stopping.QuantileStopping); None: every trial runs in full"),
        "rerank_seeds": Parameter(int, default=0,
                                  doc="train the best 2 * top_k distinct functions this many more times (other "
                                      "seeds, in full) and rank them by their mean fitness; 0: rank by the one trial"),
    }


def stopping_rule(quantile: float | None, epochs: int, population_size: int):
    """The rule of a search whose trials run `epochs` epochs: none without a quantile; otherwise
    a grace of a quarter of the epochs (at least one), and bars only once a generation (at least
    five trials) has ended, so the first bars do not come from the seed functions alone (all
    strong ones, which would cut most random newcomers)."""
    from activations.stopping import QuantileStopping

    if not quantile:
        return None
    return QuantileStopping(quantile=float(quantile), grace_epochs=max(1, int(epochs) // 4),
                            min_trials=max(5, int(population_size)))


def _job_id(trial_id: str, fingerprint: str) -> str:
    """The fan-out job (and result file) of a trial: a resumed search finds its results by it."""
    return f"trial_{trial_id}_{fingerprint}"


def _job(trial, examples_uri: str, train_config: dict, train_examples, work: str,
         stop_below: list[float | None]) -> dict[str, Any]:
    import activations
    from activations.oracle import GENOME

    expression = trial.hyperparameters.get(GENOME)
    job_id = _job_id(trial.trial_id, activations.fingerprint(expression))
    return _training_job(job_id, expression, examples_uri, train_config, train_examples, work, stop_below)


def _training_job(job_id: str, expression: str, examples_uri: str, train_config: dict, train_examples,
                  work: str, stop_below: list[float | None] = (), **overrides: Any) -> dict[str, Any]:
    """A fan-out job that trains one child network with `expression` at the trial budget."""
    config = {
        **train_config,
        **overrides,
        "activation": expression,
        "stop_below": list(stop_below) if any(bar is not None for bar in stop_below) else None,
        "output_dir": os.path.join(work, "trials", job_id),
        "tensorboard": False,
        "save_model": False,
        "evaluate_test": False,  # fitness is validation accuracy; the test split is for final runs
        "quiet": True,
    }
    return {"id": job_id, "fn": "components.training_job:train_job",
            "args": {"config": config, "examples_uri": examples_uri, "train_examples": train_examples}}


def _fitness(result: dict[str, Any]) -> tuple[float | None, str | None]:
    """(fitness, None) or (None, reason) for a failed or diverged trial."""
    if result.get("failed"):
        return None, result.get("error", "failed")
    if result.get("diverged"):
        return None, f"diverged: {result.get('divergence_reason')}"
    value = result.get("best_val_accuracy")
    if value is None or not math.isfinite(value):
        return None, "no validation accuracy"
    return float(value), None


def _core_unit_options(p: Mapping[str, Any]) -> dict[str, Any]:
    """The oracle's core-unit arguments: only the strategies that take them get them."""
    if p["strategy"] not in ("exhaustive", "rl"):
        return {}
    return {"core_units": p.get("core_units"), "unary_forms": p.get("unary_forms") or None,
            "binary_forms": p.get("binary_forms") or None}


class TunerExecutor(BaseExecutor):
    RUNS = ("components.training_job",)  # each trial / run is a job of train_job

    @staticmethod
    def _oracle(p: Mapping[str, Any], seeds: list[str]):
        """The step's EvolutionaryOracle from its parameters and the candidates' expressions."""
        import keras_tuner

        from activations.oracle import EvolutionaryOracle

        return EvolutionaryOracle(
            objective=keras_tuner.Objective(OBJECTIVE, "max"),
            max_trials=p["max_trials"],
            space=p["space"],
            strategy=p["strategy"],
            population_size=p["population_size"],
            tournament_size=p["tournament_size"],
            seed_functions=seeds if p["strategy"] != "exhaustive" else None,
            seed=p["seed"],
            **_core_unit_options(p),
            # Diverging candidates are ordinary results here, however many in a row; trials that
            # raise errors are watched below instead (KerasTuner's own limit would also fire again
            # on every resume, since it counts over the whole saved history).
            max_consecutive_failed_trials=None,
            stopping=stopping_rule(p.get("stop_quantile"), p["train_config"].get("epochs", 1), p["population_size"]),
        )

    def Do(self, input_dict, output_dict, exec_properties) -> None:  # noqa: N802
        from components.candidate_gen import read_candidates

        p = exec_properties
        examples = input_dict["examples"][0]
        seeds = [c["expression"] for c in read_candidates(input_dict["candidates"][0])]
        work = self.context.resume_dir
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always", UserWarning)
            oracle = self._oracle(p, seeds)
        for warning in said:  # the step's own note lines, not a Python warning with a source line
            self.context.progress(f"note: {warning.message}")
        oracle.verbose = 0  # one progress line per trial below replaces KerasTuner's tables
        oracle.set_project_dir(work, "oracle")
        errors_in_a_row = 0
        earlier = oracle.counts()["completed"] + oracle.counts()["failed"]
        if earlier:
            self.context.progress(f"resuming the search: {earlier} of {oracle.max_trials} trials already done",
                                  done=earlier, total=oracle.max_trials, already_done=True)
        while not oracle.is_finished():
            batch = oracle.propose_batch(None if p["parallel_trials"] > 1 else 1)
            if not batch:
                break
            bars = oracle.stopping_thresholds()  # from the trials that ended before this batch
            jobs = {trial.trial_id: _job(trial, examples.uri, p["train_config"], p["train_examples"], work, bars)
                    for trial in batch}
            results = run_jobs(list(jobs.values()), os.path.join(work, "results"),
                               parallelism=p["parallel_trials"], beam_options=p["beam_options"],
                               progress=self._trial_progress(oracle, batch, jobs))
            for trial, result in zip(batch, results):  # in the batch's order, whatever order they ended in
                fitness, error = _fitness(result)
                oracle.report(trial.trial_id, value=fitness, error=error,
                              curve=(result.get("history") or {}).get(OBJECTIVE), stopped_at=result.get("stopped_at"))
                errors_in_a_row = errors_in_a_row + 1 if result.get("failed") else 0
                if errors_in_a_row >= MAX_ERRORS_IN_A_ROW:
                    raise TrialsFailingError(
                        f"{errors_in_a_row} trials in a row raised an error instead of training (diverging "
                        f"does not count); the last: {result.get('error')}. This points at the data, the "
                        "settings or a bug, not at the candidates. Finished trials are kept: fix the cause and "
                        "run again.")
        ended = len(oracle.trials)
        if ended < p["max_trials"]:
            self.context.progress(f"the search ended after {ended} of {p['max_trials']} trials: "
                                  f"the {p['strategy']} strategy has no new function left to propose")
        trials = _trial_records(oracle, os.path.join(work, "results"))
        try:
            _check_some_result(trials)  # also on a resumed search whose trials all ended before
        except TrialsFailingError:
            # Nothing worth keeping, and a resumed search would not train its ended trials again:
            # the next attempt (after the cause is fixed) starts the search over.
            for name in ("oracle", "results", "trials"):
                shutil.rmtree(os.path.join(work, name), ignore_errors=True)
            raise
        top = _distinct_top(trials)
        if p.get("rerank_seeds"):
            top = self._rerank(top, examples.uri, p, work)
        self._write(output_dict["search_results"][0], oracle, trials, top, p["top_k"])

    def _rerank(self, top: list[dict[str, Any]], examples_uri: str, p: dict[str, Any], work: str
                ) -> list[dict[str, Any]]:
        """The best 2 * top_k distinct functions trained `rerank_seeds` more times, with the next
        seeds and in full, then ranked by the mean fitness over those runs and their search trial
        (a run that fails or diverges counts as 0); the rest follow in search order.

        One short trial ranks functions by how fast they start learning on one seed, which is
        noisy: in the CIFAR-10 run the search's best trial was the final runs' worst function.
        """
        head, seeds = top[: 2 * p["top_k"]], p["rerank_seeds"]
        base_seed = int(p["train_config"].get("seed", 0))
        jobs = [_training_job(f"rerank_{item['fingerprint']}_seed{base_seed + k}", item["expression"], examples_uri,
                              p["train_config"], p["train_examples"], work, seed=base_seed + k)
                for item in head for k in range(1, seeds + 1)]
        self.context.progress(f"re-ranking the best {len(head)} functions: {seeds} more run(s) each, "
                              f"{len(jobs)} in all", done=0, total=len(jobs))

        def progress(done: int, total: int, result: dict[str, Any] | None) -> None:
            if result is None:  # finished by an earlier attempt of this step
                self.context.progress(f"{done} of {total} re-runs already done by an earlier attempt",
                                      done=done, total=total, already_done=True)
                return
            fitness, error = _fitness(result)
            outcome = f"{OBJECTIVE} {fitness:.4f}" if fitness is not None else f"failed ({error}){retry_note(result)}"
            self.context.progress(f"re-run {done} of {total} ({result.get('job_id')}): {outcome}",
                                  done=done, total=total)

        results = run_jobs(jobs, os.path.join(work, "results"), parallelism=p["parallel_trials"],
                           beam_options=p["beam_options"], progress=progress)
        for index, item in enumerate(head):
            reruns = [_fitness(result)[0] or 0.0 for result in results[index * seeds:(index + 1) * seeds]]
            item["rerun_fitness"] = reruns
            item["mean_fitness"] = (item["fitness"] + sum(reruns)) / (1 + len(reruns))
        ranked = sorted(head, key=lambda item: -item["mean_fitness"])  # stable: ties keep the search's order
        self.context.progress("re-ranked: " + ", ".join(
            f"{item['expression']} {item['mean_fitness']:.4f}" for item in ranked[: p["top_k"]]))
        return ranked + top[len(head):]

    def _trial_progress(self, oracle, batch: list, jobs: dict[str, dict[str, Any]]):
        """The fan-out's progress callback for one batch: a line per trial as soon as its training
        ends (with several trials at once, a generation can take hours; the results reach the
        oracle afterwards, in the batch's order)."""
        from activations.oracle import GENOME, OPERATOR

        trial_of = {jobs[trial.trial_id]["id"]: trial for trial in batch}
        counts = oracle.counts()
        before = counts["completed"] + counts["failed"]
        best = [max((row["best_so_far"] for row in oracle.history() if row["best_so_far"] is not None), default=None)]

        def progress(done: int, total: int, result: dict[str, Any] | None) -> None:
            if result is None:  # finished by an earlier attempt of this step
                self.context.progress(f"{done} of {total} trials of this batch already done by an earlier attempt",
                                      done=before + done, total=oracle.max_trials, already_done=True)
                return
            trial = trial_of.get(result.get("job_id"))
            if trial is None:
                return  # not one of this batch's jobs (no such result is written): nothing to name
            fitness, error = _fitness(result)
            if fitness is not None and (best[0] is None or fitness > best[0]):
                best[0] = fitness
            outcome = f"{OBJECTIVE} {fitness:.4f}" if fitness is not None else f"failed ({error})"
            outcome += retry_note(result)  # the first of two attempts: the same line follows for the second
            if result.get("stopped_at"):
                outcome += f" (stopped after epoch {result['stopped_at']}: below most earlier trials)"
            best_text = f"{best[0]:.4f}" if best[0] is not None else "n/a"
            # Named by its id (as in trials.jsonl, the report and `actsearch show`, counting from 0),
            # then how many trials have finished.
            self.context.progress(
                f"trial {trial.trial_id} ({before + done} of {oracle.max_trials}) [{trial.hyperparameters.get(OPERATOR)}] "
                f"{trial.hyperparameters.get(GENOME)}: {outcome}; best so far {best_text}",
                done=before + done, total=oracle.max_trials)

        return progress

    def _write(self, out: Artifact, oracle, trials: list[dict[str, Any]], top: list[dict[str, Any]],
               top_k: int) -> None:
        from components import tb_summaries

        with open(out.path("trials.jsonl"), "w") as f:
            for trial in trials:
                f.write(json.dumps(trial) + "\n")
        history = oracle.history()
        _dump(out.path("history.json"), history)
        _dump(out.path("top_k.json"), top[: max(2 * top_k, 10)])
        _dump(out.path("counts.json"), oracle.counts())
        logdir = out.path("tensorboard")
        if trials:
            tb_summaries.write_hparams(logdir, [], [t for t in trials if t["fitness"] is not None] or trials)
        rows = [dict(row, distinct=row["distinct_fingerprints"]) for row in history if row["best"] is not None]
        if rows:
            tb_summaries.write_evolution(logdir, rows, strategy=oracle.strategy)
        out.properties.update({"num_trials": len(trials), "best": top[0]["expression"] if top else None,
                               "best_fitness": top[0]["fitness"] if top else None})


def _distinct_top(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trials with a fitness, best first, one per function (fingerprint)."""
    ranked = sorted((t for t in trials if t["fitness"] is not None), key=lambda t: -t["fitness"])
    top, seen = [], set()
    for trial in ranked:
        if trial["fingerprint"] not in seen:
            seen.add(trial["fingerprint"])
            top.append({k: trial[k] for k in ("trial_id", "expression", "fingerprint", "fitness", "operator",
                                              "generation")})
    return top


def _trial_order(trial_id: str) -> tuple[int, str]:
    return (int(trial_id), trial_id) if trial_id.isdigit() else (1 << 62, trial_id)


def _trial_records(oracle, results_dir: str) -> list[dict[str, Any]]:
    """One record per trial of the search (the lines of trials.jsonl), in the order of their
    ids as numbers: KerasTuner pads the ids to the width of `max_trials`, so a search resumed
    under a larger budget mixes "7" with "08", which sort wrongly as text."""
    import activations

    trials = []
    for trial_id in sorted(oracle.trials, key=_trial_order):
        try:
            info = oracle.lineage(trial_id)
        except KeyError:  # a trial the oracle dropped while repairing an interrupted save
            continue
        expression = info["expression"]
        fingerprint = info.get("fingerprint") or activations.fingerprint(expression)
        result = load_result(results_dir, _job_id(trial_id, fingerprint)) or {}
        error = _fitness(result)[1] if result else None
        if error is None and info.get("fitness") is None:
            error = getattr(oracle.trials[trial_id], "message", None)
        trials.append({
            "trial_id": trial_id,
            "expression": expression,
            "fingerprint": fingerprint,
            "fitness": info.get("fitness"),
            "status": info.get("status"),
            "generation": info.get("generation"),
            "operator": info.get("operator"),
            "parents": info.get("parents"),
            "stopped_at": info.get("stopped_at"),
            "seconds": result.get("job_seconds"),
            "images_per_sec": result.get("images_per_sec"),
            "error": error,
            "history": _curves(result.get("history")),
            "activation_stats": result.get("activation_stats") or {},
        })
    return trials


def _curves(history: dict[str, list] | None) -> dict[str, list[float | None]]:
    """The `TRIAL_CURVES` of a trial's history (epoch by epoch, from epoch 0), so the report's
    TensorBoard can draw each trial's training; a failed trial has none."""
    return {key: list(history[key]) for key in TRIAL_CURVES if key in (history or {})}


def _check_some_result(trials: list[dict[str, Any]]) -> None:
    """Raises `TrialsFailingError` when no trial of the search has a fitness (every one raised an
    error or diverged): the steps after the search would have nothing to work with. However few
    trials the search has, so also below the `MAX_ERRORS_IN_A_ROW` guard."""
    if any(trial["fitness"] is not None for trial in trials):
        return
    if not trials:
        raise TrialsFailingError("the search ran no trial, so it has no result to hand on")
    errors = Counter(trial["error"] or "no validation accuracy" for trial in trials)
    error, count = errors.most_common(1)[0]
    which = "all of them" if count == len(trials) else f"{count} of them (the most common reason)"
    raise TrialsFailingError(
        f"none of the {len(trials)} search trials produced a result; {which} failed with: {error}. "
        "This points at the data, the settings or a bug, not at the candidates: fix the cause and run "
        "again (the search then starts over).")


class Tuner(Component):
    SPEC_CLASS = TunerSpec
    EXECUTOR_CLASS = TunerExecutor


def _dump(path: str, value: Any) -> None:
    with open(path, "w") as f:
        json.dump(value, f, indent=2)


def _read(artifact: Artifact | str, name: str):
    uri = artifact.uri if isinstance(artifact, Artifact) else artifact
    with open(os.path.join(uri, name)) as f:
        return json.load(f)


def read_top(search_results: Artifact | str) -> list[dict[str, Any]]:
    return _read(search_results, "top_k.json")


def read_history(search_results: Artifact | str) -> list[dict[str, Any]]:
    return _read(search_results, "history.json")


def read_trials(search_results: Artifact | str) -> list[dict[str, Any]]:
    uri = search_results.uri if isinstance(search_results, Artifact) else search_results
    with open(os.path.join(uri, "trials.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]
