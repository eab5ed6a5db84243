"""A pipeline: a validated, topologically ordered DAG of components.

The DAG is built once (by `create_pipeline`); runners and compilers only execute or translate
it. Validation happens here so every runner fails the same way, before any work starts.
"""

from __future__ import annotations

import os
import re
from typing import Sequence

from components.base import Component, ComponentDefinitionError


class PipelineDefinitionError(ComponentDefinitionError):
    """The pipeline's DAG is invalid (duplicate ids, unknown upstream components, cycles)."""


_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


class Pipeline:
    """`components` in any order; `.components` is their deterministic topological order
    (ties keep the given order). `enable_cache=False` re-executes every component."""

    def __init__(self, name: str, components: Sequence[Component], pipeline_root: str | os.PathLike,
                 enable_cache: bool = True) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise PipelineDefinitionError(
                f"pipeline name {name!r} must start with a letter and contain only letters, "
                f"digits, '_', '-', '.'")
        if not components:
            raise PipelineDefinitionError(f"pipeline {name!r} has no components")
        self.name = name
        self.pipeline_root = os.path.abspath(os.fspath(pipeline_root))
        self.enable_cache = bool(enable_cache)
        self.components = _topological_order(name, list(components))
        self._by_id = {c.id: c for c in self.components}

    def component(self, component_id: str) -> Component:
        if component_id not in self._by_id:
            raise KeyError(f"pipeline {self.name!r} has no component {component_id!r}; "
                           f"components: {list(self._by_id)}")
        return self._by_id[component_id]

    def downstream_ids(self, component_id: str) -> list[str]:
        """Components that read (directly or not) from `component_id`, in execution order."""
        reached = {component_id}
        for c in self.components:
            if reached.intersection(c.upstream_ids):
                reached.add(c.id)
        return [c.id for c in self.components if c.id in reached and c.id != component_id]

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, {[c.id for c in self.components]})"


def _topological_order(name: str, components: list[Component]) -> list[Component]:
    by_id: dict[str, Component] = {}
    for c in components:
        if not isinstance(c, Component):
            raise PipelineDefinitionError(
                f"pipeline {name!r}: {c!r} is not a Component instance")
        if c.id in by_id:
            raise PipelineDefinitionError(
                f"pipeline {name!r}: duplicate component id {c.id!r}; give each instance a "
                f"distinct component_id")
        by_id[c.id] = c
    for c in components:
        c.validate_inputs()
        for channels in c.inputs.values():
            for ch in channels:
                if by_id.get(ch.producer_id) is not ch.producer:
                    raise PipelineDefinitionError(
                        f"pipeline {name!r}: component {c.id!r} reads {ch!r}, but its producer "
                        f"{ch.producer_id!r} is not in the pipeline; add it to the components")
    # Kahn's algorithm; picking the earliest-listed ready component keeps the order stable.
    pending = {c.id: set(c.upstream_ids) for c in components}
    order: list[Component] = []
    while pending:
        ready = [c for c in components if c.id in pending and not pending[c.id]]
        if not ready:
            raise PipelineDefinitionError(f"pipeline {name!r} has a cycle: {_cycle(pending)}")
        chosen = ready[0]
        order.append(chosen)
        del pending[chosen.id]
        for deps in pending.values():
            deps.discard(chosen.id)
    return order


def _cycle(pending: dict[str, set[str]]) -> str:
    """Describes one cycle; every pending component still waits on another pending one."""
    path, node = [], min(pending)
    while node not in path:
        path.append(node)
        node = min(pending[node])
    cycle = path[path.index(node):] + [node]
    return " reads from ".join(repr(c) for c in cycle)


def train_config_fields(config, *, final: bool) -> dict:
    """The `trainer.train.TrainConfig` fields shared by a run's trials (final=False) or final runs."""
    return {
        "model": (config.final_model or config.model) if final else config.model,
        "epochs": config.final_epochs if final else config.trial_epochs,
        "batch_size": config.batch_size,
        "optimizer": config.optimizer,
        "learning_rate": config.learning_rate,
        "weight_decay": config.weight_decay,
        "warmup_epochs": config.warmup_epochs,
        "precision": config.precision,
        "sharing": config.sharing,
        "augment": config.augment,
    }


def create_pipeline(config) -> Pipeline:
    """The actsearch DAG for a `pipeline.config.PipelineConfig`:

    ExampleGen -> CandidateGen -> Tuner -> Trainer -> Evaluator -> Exporter -> Reporter
    """
    from components.candidate_gen import CandidateGen
    from components.evaluator import Evaluator
    from components.example_gen import ExampleGen
    from components.exporter import Exporter
    from components.reporter import Reporter
    from components.trainer import Trainer
    from components.tuner import Tuner
    from pipeline.config import command_line
    from trainer.train import TrainConfig

    config.validate()
    for final in (False, True):  # fail now, not an hour into the run
        TrainConfig.from_dict(train_config_fields(config, final=final))
    parallelism = dict(parallel_trials=config.parallel_trials, beam_options=list(config.beam_options))
    example_gen = ExampleGen(
        source=config.data, data_dir=config.data_dir, validation_fraction=config.validation_fraction,
        test_fraction=config.test_fraction, max_examples=config.max_examples, seed=config.seed,
        image_size=config.image_size, skip_corrupt=config.skip_corrupt,
    )
    candidate_gen = CandidateGen(space=config.space, seed_functions=list(config.seed_functions),
                                 num_sampled=config.num_candidates, seed=config.seed)
    tuner = Tuner(
        examples=example_gen.outputs["examples"], candidates=candidate_gen.outputs["candidates"],
        train_config=train_config_fields(config, final=False), space=config.space, strategy=config.strategy,
        core_units=config.core_units, unary_forms=list(config.unary_forms), binary_forms=list(config.binary_forms),
        max_trials=config.max_trials, population_size=config.population_size,
        tournament_size=config.tournament_size, train_examples=config.trial_examples, top_k=config.top_k,
        seed=config.seed, stop_quantile=config.stop_quantile or None, rerank_seeds=config.rerank_seeds,
        **parallelism,
    )
    trainer = Trainer(
        examples=example_gen.outputs["examples"], search_results=tuner.outputs["search_results"],
        train_config=train_config_fields(config, final=True), baselines=list(config.baselines),
        top_k=config.top_k, seeds=config.seeds, parallelism=config.parallel_trials,
        beam_options=list(config.beam_options),
    )
    evaluator = Evaluator(trained_models=trainer.outputs["trained_models"], threshold=config.threshold,
                          alpha=config.alpha)
    exporter = Exporter(evaluation=evaluator.outputs["evaluation"], trained_models=trainer.outputs["trained_models"],
                        examples=example_gen.outputs["examples"], sharing=config.sharing)
    reporter = Reporter(
        evaluation=evaluator.outputs["evaluation"], trained_models=trainer.outputs["trained_models"],
        search_results=tuner.outputs["search_results"], exported=exporter.outputs["exported"],
        examples=example_gen.outputs["examples"], config=config.to_dict(), title=f"{config.name}: activation functions for {config.model} on {config.data}",
        command=command_line(config),
    )
    components = [example_gen, candidate_gen, tuner, trainer, evaluator, exporter, reporter]
    return Pipeline(config.name, components, config.pipeline_root)
