"""Run configuration: every field is explained, presets are complete, text converts or fails clearly."""

from __future__ import annotations

import dataclasses

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
