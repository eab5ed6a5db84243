"""Run configuration: every field is explained, presets are complete, text converts or fails clearly."""

from __future__ import annotations

import dataclasses
import shlex

import pytest

from pipeline import config as config_lib


def test_every_field_has_help_and_no_help_names_a_missing_field():
    fields = {f.name for f in dataclasses.fields(config_lib.PipelineConfig)}
    assert set(config_lib.FIELD_HELP) == fields
    assert all(text.strip() for text in config_lib.FIELD_HELP.values())


@pytest.mark.parametrize("field,allowed", [("model", config_lib.MODELS), ("strategy", config_lib.STRATEGIES),
                                           ("precision", config_lib.PRECISIONS), ("space", config_lib.SPACES)])
def test_help_of_a_choice_lists_every_allowed_value(field, allowed):
    assert all(value in config_lib.FIELD_HELP[field] for value in allowed)


@pytest.mark.parametrize("name", sorted(config_lib.PRESETS))
def test_presets_are_valid_configurations(name):
    config = config_lib.preset(name)
    assert config.to_dict() == config_lib.PipelineConfig.from_dict(config.to_dict()).to_dict()


def test_text_values_convert_to_the_fields_type_or_fail_naming_it():
    config = config_lib.preset("demo", {"max_trials": "7", "augment": "yes", "baselines": "relu, gelu",
                                        "final_model": "none", "alpha": "0.01"})
    assert (config.max_trials, config.augment, config.baselines, config.final_model, config.alpha) == (
        7, True, ["relu", "gelu"], None, 0.01)
    with pytest.raises(config_lib.ConfigError, match="max_trials expects int, got 'many'"):
        config_lib.preset("demo", {"max_trials": "many"})
    with pytest.raises(config_lib.ConfigError, match="unknown configuration field"):
        config_lib.preset("demo", {"max_trails": "3"})


def test_list_fields_keep_commas_inside_an_expressions_parentheses():
    config = config_lib.preset("demo", {"seed_functions": "relu, add(x,relu(x)),max(x,min(x,1))",
                                        "beam_options": "--runner=DataflowRunner,--num_workers=2"})
    assert config.seed_functions == ["relu", "add(x,relu(x))", "max(x,min(x,1))"]
    assert config.beam_options == ["--runner=DataflowRunner", "--num_workers=2"]
    assert config_lib.split_list("") == [] and config_lib.split_list(" , relu ,") == ["relu"]


def _flags_of(command: str) -> dict[str, str]:
    words = shlex.split(command)
    assert words[:2] == ["actsearch", "run"]
    return dict(word[2:].split("=", 1) for word in words[2:])


@pytest.mark.parametrize("name", sorted(config_lib.PRESETS))
def test_the_command_line_recreates_the_configuration(name):
    config = config_lib.preset(name, {"seed_functions": ["relu", "add(x,relu(x))", "x*sigmoid(beta*x)"],
                                      "name": "it's mine", "final_model": None, "threshold": 0.0025,
                                      "beam_options": [], "augment": name == "demo"})
    command = config_lib.command_line(config)
    assert config_lib.preset("demo", _flags_of(command)).to_dict() == config.to_dict()


def test_resources_from_the_command_line_are_laid_over_the_presets():
    paper = config_lib.preset("paper")
    patched = config_lib.preset("paper", {"resources": '{"tuner": {"accelerator_count": 8, "memory": null}, '
                                                       '"trainer": null, "evaluator": {"cpu": "2"}}'})
    assert patched.resources == {
        "tuner": {**{k: v for k, v in paper.resources["tuner"].items() if k != "memory"}, "accelerator_count": 8},
        "evaluator": {"cpu": "2"}}
    assert config_lib.preset("demo", {"resources": "{}"}).resources == config_lib.preset("demo").resources
    # The command line that recreates a run's configuration says what was removed, too.
    command = config_lib.command_line(patched)
    assert config_lib.preset("demo", _flags_of(command)).resources == patched.resources
    assert "null" in _flags_of(command)["resources"]


def test_a_trailing_slash_does_not_change_the_pipeline_root():
    # It is in the report step's settings: runs/x/ and runs/x must not be two configurations.
    assert config_lib.preset("demo", {"pipeline_root": "runs/x/"}) == config_lib.preset("demo", {"pipeline_root": "runs/x"})
    assert config_lib.preset("demo", {"pipeline_root": "/"}).pipeline_root == "/"


def test_the_command_line_names_only_what_differs_from_the_defaults():
    assert config_lib.command_line(config_lib.preset("demo")) == "actsearch run"
    assert _flags_of(config_lib.command_line(config_lib.preset("demo", {"max_trials": 7}))) == {"max_trials": "7"}


@pytest.mark.parametrize("text,message", [
    ("relu,add(x,", "1 '\\(' not closed in 'add\\(x,'"),
    ("swish,add(x,relu(x),tanh", "not closed in 'add\\(x,relu\\(x\\),tanh'"),
    ("relu)", "closes nothing"),
])
def test_unbalanced_parentheses_in_a_list_flag_are_refused_not_dropped(text, message):
    with pytest.raises(config_lib.ConfigError, match=f"seed_functions: unbalanced parentheses: .*{message}"):
        config_lib.preset("demo", {"seed_functions": text})


@pytest.mark.parametrize("overrides,message", [
    ({"baselines": "relu,nosuch"}, "baselines: 'nosuch' is not a known name or a valid expression.*did you mean"),
    ({"seed_functions": "relu,foo(x)"}, "seed_functions: 'foo\\(x\\)'.*unknown operator 'foo'"),
    ({"seed": "-1"}, "seed must be a non-negative integer"),
    ({"trial_examples": "0"}, "trial_examples must be at least 1"),
    ({"max_examples": "-5"}, "max_examples must be at least 3"),
    ({"image_size": "0"}, "image_size must be at least 1 or none \\(keep the source's size\\)"),
    ({"strategy": "exhaustive"}, "strategy 'exhaustive' enumerates the Swish paper's core units: add --space=swish"),
    ({"core_units": "2"}, "core_units only apply to --strategy=exhaustive or rl, not 'evolution'"),
    ({"unary_forms": "x,tanh(x)"}, "unary_forms only apply to --strategy=exhaustive or rl"),
    ({"strategy": "rl", "space": "swish", "core_units": "3"}, "--core_units must be 1 or 2"),
    ({"strategy": "exhaustive", "space": "swish", "binary_forms": "x1+x2,x1^x2"},
     "unary_forms / binary_forms: unknown core-unit forms \\['x1\\^x2'\\]"),
])
def test_settings_that_would_fail_hours_in_are_refused_at_once(overrides, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.preset("demo", overrides)


def test_the_paper_preset_runs_one_trial_per_gpu_it_asks_for():
    paper = config_lib.preset("paper")
    assert {step["accelerator_count"] for step in paper.resources.values()} == {paper.parallel_trials}


@pytest.mark.parametrize("options,message", [
    ("--direct_num_workers=2", "beam_options: '--direct_num_workers=2' is not allowed without a --runner option: "
                               "it sets the number of the local runner's worker processes, .*use --parallel_trials"),
    ("--direct_running_mode=multi_processing",
     "'--direct_running_mode=multi_processing' is not allowed.*--parallel_trials"),
    ("--runner=DirectRunner,--direct_num_workers=2",
     "'--direct_num_workers=2' is not allowed with --runner=DirectRunner: .*use --parallel_trials"),
    ("--runner=DirectRunner,direct_num_workers=2", "beam_options: 'direct_num_workers=2' is not a Beam option; "
                                                   "each item must be --name or --name=value"),
    ("--project,my-project", "'my-project' is not a Beam option"),
    ("-p=1", "'-p=1' is not a Beam option"),
])
def test_beam_options_that_would_change_results_or_be_dropped_are_refused(options, message):
    # beam_options are outside the cache key: the local runner's workers follow parallel_trials alone.
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.preset("demo", {"beam_options": options, "parallel_trials": "1"})
    with pytest.raises(config_lib.ConfigError, match=message):
        dataclasses.replace(config_lib.preset("demo"), beam_options=config_lib.split_list(options)).validate()


@pytest.mark.parametrize("field,value,message", [
    ("stop_quantile", "1", "stop_quantile must lie in \\[0, 1\\) \\(0: no early stopping\\), got 1.0"),
    ("stop_quantile", "-0.1", "stop_quantile must lie in"),
    ("resume_root", "gs://bucket/resume", "resume_root must be empty or an absolute path"),
    ("resume_root", "relative/dir", "resume_root must be empty or an absolute path"),
    ("threshold", "-0.2", "threshold must be a finite number >= 0 .*a negative one would recommend worse"),
    ("threshold", "nan", "threshold must be a finite number >= 0"),
    ("threshold", "inf", "threshold must be a finite number >= 0"),
])
def test_early_stopping_and_resume_root_values_are_checked(field, value, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.preset("demo", {field: value})


def test_image_size_and_skip_corrupt_reach_the_data_step():
    from pipeline.dag import create_pipeline

    step = create_pipeline(config_lib.preset("demo", {"image_size": "16", "skip_corrupt": "true"})).component("example_gen")
    assert step.exec_properties["image_size"] == 16 and step.exec_properties["skip_corrupt"] is True


def test_every_setting_reaches_the_dag_or_the_compiler():
    """A setting no step reads is silently ignored (image_size and skip_corrupt once were)."""
    import dataclasses
    import inspect
    import re

    from pipeline import dag

    compiler_only = {"image", "resources", "resume_root"}  # read by `actsearch compile` / the kfp runner
    source = inspect.getsource(dag)
    unread = [f.name for f in dataclasses.fields(config_lib.PipelineConfig)
              if f.name not in compiler_only and not re.search(rf"config\.{f.name}\b", source)]
    assert unread == []


def test_the_core_unit_space_reaches_the_oracle():
    from components.tuner import _core_unit_options
    from pipeline.dag import create_pipeline

    config = config_lib.preset("demo", {"strategy": "exhaustive", "space": "swish", "core_units": "1",
                                        "unary_forms": "x,tanh(x),max(x,0)", "binary_forms": "x1+x2,max(x1,x2)"})
    properties = create_pipeline(config).component("tuner").exec_properties
    assert properties["unary_forms"] == ["x", "tanh(x)", "max(x,0)"] and properties["binary_forms"] == ["x1+x2", "max(x1,x2)"]
    assert _core_unit_options(properties) == {"core_units": 1, "unary_forms": ["x", "tanh(x)", "max(x,0)"],
                                              "binary_forms": ["x1+x2", "max(x1,x2)"]}
    # Left empty: every form (None to the oracle); other strategies get none of them.
    default = create_pipeline(config_lib.preset("demo", {"strategy": "rl", "space": "swish"})).component("tuner")
    assert _core_unit_options(default.exec_properties) == {"core_units": None, "unary_forms": None, "binary_forms": None}
    assert _core_unit_options(create_pipeline(config_lib.preset("demo")).component("tuner").exec_properties) == {}


def test_early_stopping_reaches_the_tuner_and_zero_switches_it_off():
    from pipeline.dag import create_pipeline

    def tuner_quantile(**overrides):
        return create_pipeline(config_lib.preset("demo", overrides)).component("tuner").exec_properties["stop_quantile"]

    assert tuner_quantile() == 0.25 and tuner_quantile(stop_quantile="0.5") == 0.5
    assert tuner_quantile(stop_quantile="0") is None
    assert config_lib.preset("demo", {"resume_root": "/gcs/b/r"}).resume_root == "/gcs/b/r"


def _numeric_fields(kind: str) -> list[str]:
    return [f.name for f in dataclasses.fields(config_lib.PipelineConfig) if f.type.split(" |")[0] == kind]


def test_every_numeric_field_has_a_rule():
    """NaN passes `x <= 0`-style checks, so every int and float field needs its own rule."""
    assert set(config_lib.NUMBER_RULES) == set(_numeric_fields("int") + _numeric_fields("float"))
    assert len(_numeric_fields("float")) >= 8


@pytest.mark.parametrize("name", _numeric_fields("float"))
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", float("nan"), float("inf")])
def test_no_float_field_takes_nan_or_infinity(name, value):
    with pytest.raises(config_lib.ConfigError, match=f"^--{name} (must|.*lie in).*, got {str(float(value))}$"):
        config_lib.preset("demo", {name: value}, functions=False)


@pytest.mark.parametrize("overrides,message", [
    ({"learning_rate": "0"}, "--learning_rate must be a finite number > 0, got 0.0"),
    ({"learning_rate": "-0.1"}, "--learning_rate must be a finite number > 0, got -0.1"),
    ({"weight_decay": "-1"}, r"--weight_decay must be a finite number >= 0 \(0: none\), got -1.0"),
    ({"warmup_epochs": "-5"}, r"--warmup_epochs must be a finite number >= 0 \(0: no warm-up\), got -5.0"),
    ({"validation_fraction": "0.5"}, r"--validation_fraction must lie in \(0, 0.5\), got 0.5"),
    ({"seed": str(2**32)}, r"--seed must be a non-negative integer below 2\*\*32"),
    ({"max_trials": 2.5}, "--max_trials must be an integer, got 2.5"),
    ({"alpha": True}, "--alpha must be a number, got True"),
])
def test_out_of_range_numbers_name_the_flag_and_what_is_allowed(overrides, message):
    with pytest.raises(config_lib.ConfigError, match=f"^{message}"):
        config_lib.preset("demo", overrides, functions=False)
    assert config_lib.preset("demo", {"weight_decay": "0", "warmup_epochs": "0"}, functions=False).weight_decay == 0
