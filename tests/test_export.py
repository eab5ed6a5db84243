"""`activations.load`: activation.json in, fresh layers out; a damaged file is named, never half-read."""

from __future__ import annotations

import json

import numpy as np
import pytest

import activations
from activations.export import ActivationFileError, activation_record


def _write(tmp_path, record) -> str:
    path = tmp_path / "activation.json"
    path.write_text(json.dumps(record))
    return str(path)


def test_load_starts_every_new_layer_from_the_learned_means(tmp_path):
    record = activation_record("x*sigmoid(beta*x)", "channel", learned={"beta": {"mean": 1.7, "std": 0.1}})
    make = activations.load(_write(tmp_path, record))
    first, second = make(), make()
    assert first is not second and first.sharing == "channel"
    assert first.initial_values == {"beta": 1.7}
    assert activations.load(tmp_path, initial="default")().initial_values == {"beta": 1.0}
    assert activations.load(tmp_path, sharing="layer")().sharing == "layer"
    # The factory's own arguments override the file's.
    assert make(initial=0.5).initial_values == {"beta": 0.5} and make(sharing="layer").sharing == "layer"
    assert make(name="act").name == "act" and make(name="act").initial_values == {"beta": 1.7}
    x = np.linspace(-3, 3, 7).astype("float32")
    np.testing.assert_allclose(np.asarray(first(x[None])), (x / (1 + np.exp(-1.7 * x)))[None], rtol=1e-5)


def test_loading_a_pipeline_root_points_at_its_export_folder(tmp_path):
    (tmp_path / "export").mkdir()
    _write(tmp_path / "export", activation_record("x*sigmoid(beta*x)", "layer"))
    with pytest.raises(ActivationFileError, match=r"a run's pipeline root keeps it in export/: .*export/activation.json"):
        activations.load(tmp_path)
    assert activations.load(tmp_path / "export")().initial_values == {"beta": 1.0}


def test_an_initial_mapping_overrides_only_the_parameters_it_names(tmp_path):
    record = activation_record("alpha * x * sigmoid(beta * x)", "layer",
                               learned={"alpha": {"mean": 0.1}, "beta": {"mean": 1.7}})
    make = activations.load(_write(tmp_path, record))
    assert make(initial={"beta": 3.0}).initial_values == {"alpha": 0.1, "beta": 3.0}
    assert make(initial=2.0).initial_values == {"alpha": 2.0, "beta": 2.0}
    with pytest.raises(ValueError, match="gamma"):
        make(initial={"gamma": 3.0})


@pytest.mark.parametrize("record,message", [
    ({"expression": "x*sigmoid(beta*x)", "format_version": 99}, "format_version 99; .*reads format_version 1 .*newer"),
    ({"expression": "x*sigmoid(beta*x)", "format_version": "1"}, "format_version '1'; it must be a whole number"),
    ({"expression": "x*sigmoid(beta*x)", "learned_parameters": {"beta": {"mean": 1e300}}}, "within float32's range"),
    ({"expression": "x*sigmod(beta*x)"}, "does not parse: .*unknown operator 'sigmod'"),
    ({"expression": "x*sigmoid(beta*x)", "learned_parameters": [1]}, "learned_parameters in .* must be a mapping"),
    ({"expression": "x*sigmoid(beta*x)", "learned_parameters": {"beta": {"mean": "abc"}}}, r"learned_parameters\['beta'\]"),
    ({"expression": "x*sigmoid(beta*x)", "learned_parameters": {"beta": {"mean": float("nan")}}}, "finite number"),
    ({"expression": "x", "sharing": "pixel"}, "sharing 'pixel' in"),
    ({"function": "x"}, "no 'expression' field"),
    ({"expression": "alpha*x", "learned_parameters": {"gamma": {"mean": 2.0}}},
     r"names \['gamma'\], which the expression 'alpha \* x' does not have \(its parameters: \['alpha'\]\)"),
])
def test_a_damaged_file_is_refused_naming_the_file_and_the_field(tmp_path, record, message):
    path = _write(tmp_path, record)
    with pytest.raises(ActivationFileError, match=message) as info:
        activations.load(path)
    assert path in str(info.value)


def test_a_file_that_is_not_text_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "activation.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ActivationFileError, match=f"{path}' is not UTF-8 text"):
        activations.load(path)


def test_bad_arguments_are_blamed_on_the_arguments_not_the_file(tmp_path):
    path = _write(tmp_path, activation_record("x", "layer"))
    with pytest.raises(ValueError, match="sharing must be None") as info:
        activations.load(path, sharing="bogus")
    assert not isinstance(info.value, ActivationFileError)
    with pytest.raises(ValueError, match="initial must be one of"):
        activations.load(path, initial="random")
    with pytest.raises(ActivationFileError, match="no activation file"):
        activations.load(tmp_path / "missing.json")


def test_load_reads_a_file_with_the_exporters_input_and_output_entries(tmp_path):
    """The Exporter describes its model beside the activation (`"input"`, `"output"`): `load`
    reads past them, so a file from a newer export still loads."""
    record = activation_record("x*sigmoid(beta*x)", "layer", learned={"beta": {"mean": 1.5}},
                               input={"shape": [8, 8, 1], "value_range": [0, 255]},
                               output={"kind": "logits", "class_names": ["0", "1"]}, model_seed=0)
    make = activations.load(_write(tmp_path, record))
    assert make().initial_values == {"beta": 1.5} and make.record["output"]["class_names"] == ["0", "1"]
