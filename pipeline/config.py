"""Run configuration and its presets.

A `PipelineConfig` is everything a run needs, as plain JSON-able values: data, child network,
search, final training, evaluation and runtime. Three presets are complete configurations:

* ``demo``: the embedded digits data, a small CNN and a small search; end to end in minutes on a
  laptop CPU. What `make demo` runs.
* ``cifar10``: a search on CIFAR-10 sized for a 2-core CPU in about two hours: 20,000 of the
  images (14,000 train / 2,000 validation / 4,000 test), ResNet-20 under mixed_bfloat16, 30
  trials of 3 epochs on 5,000 images, then the top 2 functions and relu, swish and gelu trained
  for 12 epochs with 4 seeds each.
* ``paper``: the source papers' budgets for a GPU machine (ResNet-20 children on CIFAR-10,
  about 9K-step (25-epoch) trials as in "Searching for Activation Functions", 1,000 trials in a
  population of 50; the top 3 functions and the baselines trained 200 epochs on ResNet-56 with 5
  seeds). Four trials run at once, one per GPU; compiled for Kubeflow, the tuner and trainer
  steps each ask for 4 GPUs. Other architectures of PANGAEA: `--model=wrn_10_4
  --final_model=wrn_10_4`, `resnet56_v2`, `all_cnn_c`; CIFAR-100: `--data=tfds:cifar100`.

`resources` holds the Kubeflow resource requests per component id (`cpu`, `memory`,
`accelerator`, `accelerator_count`, `retries`, ...; see `pipeline.kubeflow.RESOURCE_KEYS`); on the
command line it is JSON, laid over the preset's mapping as a merge patch (`merge_resources`).

Any field can be overridden (`with_overrides`), and unknown fields or bad values are rejected
before any work starts, naming the field and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shlex
from typing import Any, Callable, Mapping

MODELS = ("mlp", "small_cnn", "resnet20", "resnet56", "resnet56_v2", "wrn_10_4", "all_cnn_c")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
SPACES = ("pangaea", "swish")
STRATEGIES = ("evolution", "random", "exhaustive", "rl")
CORE_UNIT_STRATEGIES = ("exhaustive", "rl")
"""The strategies that propose the Swish paper's core units (space swish, `core_units`, forms)."""
SHARING = ("layer", "channel")
OPTIMIZERS = ("sgd", "adam", "adamw")
RUNNERS = ("local", "kfp-local")
TRAINING_STEPS = ("tuner", "trainer")
"""The components that train networks: what Kubeflow resource requests are mostly about."""


class ConfigError(ValueError):
    """A configuration field is unknown or has a value that is not allowed."""


@dataclasses.dataclass
class PipelineConfig:
    """One run of the pipeline, every field a plain value (see the module docstring)."""

    name: str = "actsearch"
    # Data.
    data: str = "embedded:digits"
    data_dir: str | None = None
    max_examples: int | None = None
    image_size: int | None = None
    skip_corrupt: bool = False
    validation_fraction: float = 0.1
    test_fraction: float = 0.2
    augment: bool = False
    # Child network and its training.
    model: str = "small_cnn"
    sharing: str = "channel"
    optimizer: str = "adam"
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.0
    batch_size: int = 64
    precision: str = "auto"
    # Search.
    space: str = "pangaea"
    strategy: str = "evolution"
    core_units: int | None = None
    unary_forms: list[str] = dataclasses.field(default_factory=list)
    binary_forms: list[str] = dataclasses.field(default_factory=list)
    num_candidates: int = 8
    seed_functions: list[str] = dataclasses.field(
        default_factory=lambda: ["relu", "swish", "gelu", "elu", "softplus", "tanh"]
    )
    max_trials: int = 24
    population_size: int = 8
    tournament_size: int = 3
    trial_epochs: int = 3
    trial_examples: int | None = None
    parallel_trials: int = 1
    stop_quantile: float = 0.25
    top_k: int = 3
    rerank_seeds: int = 0
    # Final training and evaluation.
    baselines: list[str] = dataclasses.field(default_factory=lambda: ["relu", "swish", "gelu"])
    final_model: str | None = None
    final_epochs: int = 8
    seeds: int = 3
    threshold: float = 0.0
    alpha: float = 0.05
    # Runtime.
    seed: int = 0
    pipeline_root: str = "runs/demo"
    beam_options: list[str] = dataclasses.field(default_factory=list)
    image: str = "actsearch:latest"
    resume_root: str = ""
    resources: dict[str, dict] = dataclasses.field(default_factory=lambda: {
        step: {"cpu": "4", "memory": "16G"} for step in TRAINING_STEPS})

    def validate(self, functions: bool = True) -> "PipelineConfig":
        """Raises ConfigError naming the first bad field and what is allowed.

        `functions=False` leaves out `check_functions`, which imports the activations library (and
        with it TensorFlow, seconds): the CLI checks everything else first, so a typo in a value
        is reported at once, and `runs`/`show` never need it.
        """
        _choice("model", self.model, MODELS)
        if self.final_model is not None:
            _choice("final_model", self.final_model, MODELS)
        _choice("precision", self.precision, PRECISIONS)
        _choice("space", self.space, SPACES)
        _choice("strategy", self.strategy, STRATEGIES)
        if self.strategy in CORE_UNIT_STRATEGIES and self.space != "swish":
            what = "trains a controller over" if self.strategy == "rl" else "enumerates"
            raise ConfigError(f"strategy {self.strategy!r} {what} the Swish paper's core units: "
                              f"add --space=swish (space is {self.space!r})")
        given = [name for name in ("core_units", "unary_forms", "binary_forms") if getattr(self, name)]
        if given and self.strategy not in CORE_UNIT_STRATEGIES:
            raise ConfigError(f"{', '.join(given)} only apply to --strategy=exhaustive or rl, not {self.strategy!r}")
        _choice("sharing", self.sharing, SHARING)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        if not any(self.data.startswith(scheme) for scheme in ("embedded:", "tfds:", "folder:")):
            raise ConfigError(f"data {self.data!r} must start with embedded:, tfds: or folder: (e.g. embedded:digits)")
        for name, rule in NUMBER_RULES.items():
            _check_number(name, getattr(self, name), rule)
        if self.tournament_size > self.population_size:
            raise ConfigError(
                f"tournament_size ({self.tournament_size}) cannot exceed population_size ({self.population_size})"
            )
        if not self.pipeline_root.strip():  # an empty root would scatter a run's files in the current directory
            raise ConfigError(f"pipeline_root must name a directory for the run records and results "
                              f"(e.g. runs/demo), got {self.pipeline_root!r}")
        if not isinstance(self.resources, dict) or not all(isinstance(v, dict) for v in self.resources.values()):
            raise ConfigError(
                "resources must map a component id to its settings, e.g. "
                '{"trainer": {"cpu": "8", "memory": "32G", "accelerator": "nvidia.com/gpu", "accelerator_count": 1}}'
                f"; got {self.resources!r}")
        if "relu" not in self.baselines:
            raise ConfigError(f"baselines must include relu (the reference of the comparison), got {self.baselines}")
        _check_beam_options(self.beam_options)
        if self.resume_root and (not self.resume_root.startswith("/") or "://" in self.resume_root):
            raise ConfigError(f"resume_root must be empty or an absolute path every Kubeflow step sees (a mounted "
                              f"volume, or /gcs/<bucket>/... for gs://<bucket>/...), got {self.resume_root!r}")
        if functions:
            self.check_functions()
        return self

    def check_functions(self) -> "PipelineConfig":
        """Every seed function and baseline must be a name or expression `activations.get` takes,
        and the core-unit forms must be the Swish paper's."""
        _check_functions("seed_functions", self.seed_functions)
        _check_functions("baselines", self.baselines)
        if self.unary_forms or self.binary_forms:
            from activations.space import checked_forms

            try:
                checked_forms(self.core_units or 1, self.unary_forms or None, self.binary_forms or None)
            except ValueError as error:
                raise ConfigError(f"unary_forms / binary_forms: {error}") from None
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def with_overrides(self, overrides: Mapping[str, Any], *, functions: bool = True) -> "PipelineConfig":
        """A copy with fields replaced; values given as text are converted to the field's type
        (`functions`: see `validate`)."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - set(fields))
        if unknown:
            raise ConfigError(f"unknown configuration field(s) {unknown}; allowed: {sorted(fields)}")
        values = {name: _convert(name, value, getattr(self, name), fields[name].type) for name, value in overrides.items()}
        if isinstance(values.get("pipeline_root"), str) and values["pipeline_root"].strip():
            # runs/demo/ is runs/demo: the root is in the report's settings and command, and a
            # trailing slash alone must not make a cached report step run again.
            values["pipeline_root"] = values["pipeline_root"].rstrip("/") or "/"
        return dataclasses.replace(self, **values).validate(functions)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PipelineConfig":
        return cls().with_overrides(dict(data))


FIELD_HELP: dict[str, str] = {
    "name": "name of the pipeline (run records, report title, Kubeflow pipeline name)",
    "data": "data source: embedded:digits, tfds:<name> (e.g. tfds:cifar10) or folder:<path> "
            "(<class>/<image> or <split>/<class>/<image>)",
    "data_dir": "TFDS data directory (tfds: sources only; default: TFDS's own)",
    "max_examples": "cap on the examples kept in all, divided among the splits by their fractions "
                    "(a stratified subset; none: all)",
    "image_size": "resize every image to this square size in pixels (needed when a folder's images "
                  "differ in size; none: keep the source's size)",
    "skip_corrupt": "skip image files that cannot be decoded (listed in a warning) instead of failing",
    "validation_fraction": "share of the data held out for validation when the source has no such split, in (0, 0.5)",
    "test_fraction": "share of the data held out for the test when the source has no such split, in (0, 0.5)",
    "augment": "standard CIFAR augmentation (pad-and-crop, horizontal flip) while training",
    "model": f"child network of the search trials: {', '.join(MODELS)}",
    "sharing": f"parameters of a learned activation per layer or per channel: {', '.join(SHARING)}",
    "optimizer": f"optimiser of every training run: {', '.join(OPTIMIZERS)}",
    "learning_rate": "peak learning rate (cosine decay after the warm-up)",
    "weight_decay": "weight decay of every training run",
    "warmup_epochs": "epochs of linear learning-rate warm-up",
    "batch_size": "batch size of every training run",
    "precision": f"{', '.join(PRECISIONS)} (auto: mixed_float16 on a GPU, mixed_bfloat16 on a CPU "
                 "with bfloat16 support, else float32)",
    "space": f"search space: {', '.join(SPACES)} (pangaea: PANGAEA's operators and parametric "
             "forms; swish: the Swish paper's unary-binary core units)",
    "strategy": f"how trials are proposed: {', '.join(STRATEGIES)} (exhaustive and rl need --space=swish)",
    "core_units": "core units per function of --strategy=exhaustive or rl: 1 or 2 (none: 1 for exhaustive, 2 for rl)",
    "unary_forms": "comma-separated unary forms of the core units of --strategy=exhaustive or rl, e.g. "
                   "x,tanh(x),sigmoid(x) (none: all 25 of the Swish paper)",
    "binary_forms": "comma-separated binary forms of the core units of --strategy=exhaustive or rl, e.g. "
                    "x1+x2,x1*x2,max(x1,x2) (none: all 10 of the Swish paper)",
    "num_candidates": "functions sampled from the space to join the seed functions in the first population",
    "seed_functions": "comma-separated names or expressions the search starts from",
    "max_trials": "number of search trials (each trains one child network)",
    "population_size": "functions kept alive by regularized evolution; for every strategy also the most trials "
                       "in flight (with --parallel_trials, the batch the rl controller learns from at once)",
    "tournament_size": "functions drawn per tournament when choosing a parent (at most population_size)",
    "trial_epochs": "training epochs of each search trial",
    "trial_examples": "cap on the training examples of each search trial (none: the whole train split)",
    "parallel_trials": "trials and final runs at once (Beam workers; one GPU each when there are GPUs)",
    "stop_quantile": "a search trial stops early when, after an epoch, its best validation accuracy so far is "
                     "below this quantile of the earlier trials' at that epoch (checked from a quarter of "
                     "trial_epochs on, once population_size trials, at least 5, have ended), in [0, 1) "
                     "(0: every trial runs in full)",
    "top_k": "best functions of the search that go on to the final training",
    "rerank_seeds": "before choosing the top_k, train the search's best 2 * top_k distinct functions this many "
                    "more times (next seeds, trial budget, no early stop) and rank them by their mean validation "
                    "accuracy (0: rank by the single search trial)",
    "baselines": "comma-separated functions trained beside the winners; must include relu",
    "final_model": "child network of the final training (none: the same as --model)",
    "final_epochs": "training epochs of each final run",
    "seeds": "final runs per function, each with its own seed (at least 3 for the statistical test)",
    "threshold": "minimum mean gain over relu to recommend a function, in the metric's unit "
                 "(0.005 = half a point of accuracy)",
    "alpha": "significance level of the Holm-corrected Welch tests, in (0, 1)",
    "seed": "seed of the data split, the candidate sampling and the search (final runs use seeds 0 to seeds-1)",
    "pipeline_root": "directory of run records, artifacts, the report and TensorBoard logs",
    "beam_options": "comma-separated Apache Beam pipeline options of the fan-out "
                    "(e.g. --runner=DataflowRunner,--project=...)",
    "image": "container image of the compiled Kubeflow pipeline's steps",
    "resume_root": "compiled Kubeflow pipeline: an absolute path every step sees (a shared volume, or "
                   "/gcs/<bucket>/... for gs://<bucket>/...) where a step keeps its resume state and its "
                   "finished outputs, so a preempted or failed step continues and a re-run reuses finished "
                   "steps (empty: a step starts over)",
    "resources": "JSON mapping component id to Kubeflow resource requests, e.g. "
                 '{"trainer": {"cpu": "8", "memory": "32G"}}, laid over the preset\'s requests '
                 '(null removes a setting or a step\'s requests)',
}
"""What each `PipelineConfig` field means and allows: the command line's flag help."""


def _check_functions(name: str, functions: list[str]) -> None:
    """Every name or expression must be one `activations.get` accepts, so a typo fails now."""
    from activations.named import expression_for

    for text in functions:
        try:
            expression_for(text)
        except ValueError as error:
            raise ConfigError(f"{name}: {text!r} is not a known name or a valid expression: {error}") from None


_BEAM_OPTION = re.compile(r"--[A-Za-z_][A-Za-z0-9_-]*(=.*)?", re.DOTALL)


def _check_beam_options(options: list[str]) -> None:
    """Each item must be one option (a stray value would be dropped by Beam without a word), and
    without a --runner none may set the local runner's workers, which parallel_trials sets."""
    from components.fanout import check_beam_options

    for item in options:
        if not isinstance(item, str) or not _BEAM_OPTION.fullmatch(item):
            raise ConfigError(f"beam_options: {item!r} is not a Beam option; each item must be --name or "
                              "--name=value (e.g. --runner=DataflowRunner,--project=my-project)")
    try:
        check_beam_options(options)
    except ValueError as error:
        raise ConfigError(str(error)) from None


@dataclasses.dataclass(frozen=True)
class NumberRule:
    """What a numeric field allows: a finite int (`integer`) or number for which `ok` holds,
    or None when `none` (no limit). `allowed` says it after the flag's name."""

    allowed: str
    ok: Callable[[float], bool]
    integer: bool = False
    none: bool = False
    none_means: str = "no limit"


def _at_least(minimum: int, none: bool = False, none_means: str = "no limit") -> NumberRule:
    return NumberRule(f"must be at least {minimum}" + (f" or none ({none_means})" if none else ""),
                      lambda value: value >= minimum, integer=True, none=none, none_means=none_means)


NUMBER_RULES: dict[str, NumberRule] = {
    **{name: _at_least(1) for name in ("max_trials", "population_size", "tournament_size", "trial_epochs",
                                       "final_epochs", "seeds", "top_k", "batch_size", "parallel_trials")},
    "max_examples": _at_least(3, none=True),
    "trial_examples": _at_least(1, none=True),
    "image_size": _at_least(1, none=True, none_means="keep the source's size"),
    "num_candidates": _at_least(0),
    "rerank_seeds": _at_least(0),
    "core_units": NumberRule("must be 1 or 2 (none: 1 for exhaustive, 2 for rl)", lambda value: value in (1, 2),
                             integer=True, none=True, none_means="1 for exhaustive, 2 for rl"),
    "seed": NumberRule("must be a non-negative integer below 2**32", lambda value: 0 <= value < 2**32, integer=True),
    "validation_fraction": NumberRule("must lie in (0, 0.5)", lambda value: 0 < value < 0.5),
    "test_fraction": NumberRule("must lie in (0, 0.5)", lambda value: 0 < value < 0.5),
    "learning_rate": NumberRule("must be a finite number > 0", lambda value: value > 0),
    "weight_decay": NumberRule("must be a finite number >= 0 (0: none)", lambda value: value >= 0),
    "warmup_epochs": NumberRule("must be a finite number >= 0 (0: no warm-up)", lambda value: value >= 0),
    "stop_quantile": NumberRule("must lie in [0, 1) (0: no early stopping)", lambda value: 0 <= value < 1),
    "threshold": NumberRule("must be a finite number >= 0 (the least mean gain over relu that recommends a "
                            "function; a negative one would recommend worse functions)", lambda value: value >= 0),
    "alpha": NumberRule("must lie in (0, 1)", lambda value: 0 < value < 1),
}
"""The rule of every int and float field (a test keeps it so), checked by `validate` before
any work: NaN (false in every comparison, so `learning_rate <= 0` let it through), inf and
out-of-range values fail at once, naming the flag and what it allows."""


def _check_number(name: str, value: Any, rule: NumberRule) -> None:
    """Raises ConfigError naming the flag (every field is one) and what it allows."""
    if value is None and rule.none:
        return
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if not (is_int or (not rule.integer and isinstance(value, float))):
        raise ConfigError(f"--{name} must be {'an integer' if rule.integer else 'a number'}"
                          f"{f' or none ({rule.none_means})' if rule.none else ''}, got {value!r}")
    if not (math.isfinite(value) and rule.ok(value)):
        raise ConfigError(f"--{name} {rule.allowed}, got {value!r}")


def _choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} {value!r} is not allowed; choose one of {list(allowed)}")


def _convert(name: str, value: Any, current: Any, annotation: str) -> Any:
    """Text from a command line becomes the field's type; other values pass through."""
    if not isinstance(value, str) or annotation == "str":
        return value
    if value.lower() in ("none", "null") and "None" in annotation:
        return None
    try:
        if annotation.startswith("dict"):
            return json.loads(value)
        if annotation.startswith("list"):
            try:
                return split_list(value)
            except ValueError as error:
                raise ConfigError(f"{name}: {error}") from None
        if annotation.startswith("bool"):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if annotation.startswith("int"):
            return int(value)
        if annotation.startswith("float"):
            return float(value)
    except ConfigError:
        raise
    except ValueError:  # json.JSONDecodeError included
        raise ConfigError(f"{name} expects {annotation}"
                          + (" as JSON" if annotation.startswith("dict") else "") + f", got {value!r}") from None
    return value


def split_list(text: str) -> list[str]:
    """`relu,add(x,relu(x))` -> ["relu", "add(x,relu(x))"]: commas inside parentheses stay.

    List fields hold expressions in the functional form, whose arguments are comma-separated.
    """
    items, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced parentheses: the ')' at position {index} of {text!r} closes nothing")
        elif char == "," and depth == 0:
            items.append(text[start:index])
            start = index + 1
    if depth:
        raise ValueError(f"unbalanced parentheses: {depth} '(' not closed in {text[start:].strip()!r}")
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


def command_line(config: PipelineConfig) -> str:
    """The `actsearch run` command that recreates `config`: one flag per field that differs from
    the defaults (the demo preset), quoted for a POSIX shell."""
    default = PipelineConfig()
    words = ["actsearch", "run"]
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if value != getattr(default, field.name):
            if field.name == "resources":      # read back as a merge patch over the defaults
                value = resources_patch(default.resources, value)
            words.append(f"--{field.name}={_as_flag_text(value)}")
    return " ".join(shlex.quote(word) for word in words)


def resources_patch(base: Mapping[str, Mapping], target: Mapping[str, Mapping]) -> dict[str, Any]:
    """The merge patch that turns `base` into `target` (`merge_resources(base, patch) == target`)."""
    patch: dict[str, Any] = {component: None for component in base if component not in target}
    for component, settings in target.items():
        old = base.get(component, {})
        patch[component] = {key: None for key in old if key not in settings} | dict(settings)
    return patch


def _as_flag_text(value: Any) -> str:
    """A field's value as `_convert` reads it back."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return repr(value) if isinstance(value, float) else str(value)


PRESETS: dict[str, dict[str, Any]] = {
    "demo": {},
    "cifar10": {
        "name": "actsearch-cifar10",
        "data": "folder:.cache/cifar10/train",
        "max_examples": 20000,
        "test_fraction": 0.2,
        "validation_fraction": 0.1,
        "augment": True,
        "model": "resnet20",
        "optimizer": "sgd",
        "learning_rate": 0.1,
        "weight_decay": 5e-4,
        "warmup_epochs": 1.0,
        "batch_size": 128,
        "precision": "mixed_bfloat16",
        "num_candidates": 4,
        "max_trials": 30,
        "population_size": 8,
        "tournament_size": 3,
        "trial_epochs": 3,
        "trial_examples": 5000,
        "parallel_trials": 1,
        "top_k": 2,
        "rerank_seeds": 1,
        "final_epochs": 12,
        "seeds": 4,
        "pipeline_root": "runs/cifar10",
    },
    "paper": {
        "name": "actsearch-paper",
        "data": "tfds:cifar10",
        "augment": True,
        "model": "resnet20",
        "optimizer": "sgd",
        "learning_rate": 0.1,
        "weight_decay": 1e-4,
        "warmup_epochs": 2.0,
        "batch_size": 128,
        "precision": "auto",
        "num_candidates": 50,
        "max_trials": 1000,
        "population_size": 50,
        "tournament_size": 5,
        "trial_epochs": 25,
        "parallel_trials": 4,
        "top_k": 3,
        "final_model": "resnet56",
        "final_epochs": 200,
        "seeds": 5,
        "resources": {step: {"cpu": "16", "memory": "64G", "accelerator": "nvidia.com/gpu", "accelerator_count": 4}
                      for step in TRAINING_STEPS},
        "pipeline_root": "runs/paper",
    },
}


def preset(name: str, overrides: Mapping[str, Any] | None = None, *, functions: bool = True) -> PipelineConfig:
    """A complete configuration by preset name, with fields overridden (`functions`: see
    `PipelineConfig.validate`)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    overrides = dict(overrides or {})
    if "resources" in overrides:
        preset_resources = PRESETS[name].get("resources", PipelineConfig().resources)
        patch = _convert("resources", overrides["resources"], preset_resources, "dict[str, dict]")
        overrides["resources"] = merge_resources(preset_resources, patch)
    return PipelineConfig().with_overrides({**PRESETS[name], **overrides}, functions=functions)


def merge_resources(base: Mapping[str, Any], patch: Any) -> Any:
    """`patch` laid over `base` as a JSON merge patch (RFC 7396), one level per component: a
    component's settings are updated key by key, `null` removes a setting or (for a whole
    component) all of its requests. So `{"tuner": {"accelerator_count": 8}}` keeps the preset's
    CPU, memory and accelerator type, and the trainer's requests. A patch that is not a mapping
    of mappings is returned as it is, for `validate` to report."""
    if not isinstance(patch, Mapping) or not all(v is None or isinstance(v, Mapping) for v in patch.values()):
        return patch
    merged = {component: dict(settings) for component, settings in base.items()}
    for component, settings in patch.items():
        if settings is None:
            merged.pop(component, None)
            continue
        target = merged.setdefault(component, {})
        for key, value in settings.items():
            if value is None:
                target.pop(key, None)
            else:
                target[key] = value
    return merged
