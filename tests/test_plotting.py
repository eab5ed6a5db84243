"""activations.plot: valid PNGs of the function and its derivative, per-channel spread."""

import struct

import keras
import numpy as np
import pytest

import activations
from activations import plotting


def _png_size(path):
    with open(path, "rb") as handle:
        header = handle.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    assert header[12:16] == b"IHDR"
    return struct.unpack(">II", header[16:24])


EXPECTED_SIZE = (round(plotting.FIGSIZE[0] * plotting.DPI), round(plotting.FIGSIZE[1] * plotting.DPI))


def test_plot_of_expression_text_writes_png_of_the_right_size(tmp_path):
    path = tmp_path / "deep" / "d3.png"
    returned = activations.plot("max(relu(x), cosh(elu(x)))", path)
    assert returned == str(path)
    assert _png_size(path) == EXPECTED_SIZE
    assert path.stat().st_size > 5000  # something was drawn


def test_plot_of_per_channel_layer_and_builtin_layer(tmp_path):
    layer = activations.ParametricActivation("alpha * x * sigmoid(beta * x)", sharing="channel")
    layer.build((None, 8, 8, 16))
    layer.parameters["beta"].assign(np.linspace(0.2, 3.0, 16).astype("float32"))
    assert _png_size(activations.plot(layer, tmp_path / "channels.png")) == EXPECTED_SIZE
    assert _png_size(activations.plot(activations.get("relu"), tmp_path / "relu.png")) == EXPECTED_SIZE
    assert _png_size(activations.plot(keras.layers.LeakyReLU(0.2), tmp_path / "leaky.png")) == EXPECTED_SIZE


def test_curves_use_learned_parameters_per_channel():
    layer = activations.ParametricActivation("x * sigmoid(beta * x)", sharing="channel")
    layer.build((None, 4))
    betas = np.array([0.5, 1.0, 2.0, 4.0], "float32")
    layer.parameters["beta"].assign(betas)
    x = np.linspace(-5, 5, 101)
    title, values, slopes = plotting.curves(layer, x)
    assert values.shape == slopes.shape == (101, 4)
    expected = x[:, None] / (1 + np.exp(-betas[None, :] * x[:, None]))
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-6)
    s = 1 / (1 + np.exp(-betas * x[:, None]))
    np.testing.assert_allclose(slopes, s + betas * x[:, None] * s * (1 - s), rtol=1e-4, atol=1e-5)
    assert "x * sigmoid(beta * x)" in title and "4 channels" in title and "median 1.5" in title


def test_curves_of_scalar_parameters_name_their_values():
    layer = activations.get("swish", initial={"beta": 1.75})
    layer.build((None, 3))
    title, values, slopes = plotting.curves(layer, np.array([0.0, 1.0]))
    assert values.shape == (2, 1)
    assert "beta=1.75" in title
    np.testing.assert_allclose(slopes[0, 0], 0.5, atol=1e-6)  # swish'(0) = 1/2 for any beta


def test_plot_of_constant_and_steep_functions(tmp_path):
    _, values, slopes = plotting.curves("2.5", np.linspace(-1, 1, 5))
    np.testing.assert_allclose(values, 2.5)
    np.testing.assert_allclose(slopes, 0.0)
    assert _png_size(activations.plot("2.5", tmp_path / "flat.png")) == EXPECTED_SIZE
    assert _png_size(activations.plot("x / (x - x)", tmp_path / "steep.png")) == EXPECTED_SIZE


@pytest.mark.parametrize("x_range", [(1, 1), (5, -5), (0, float("inf"))])
def test_bad_range_is_rejected(tmp_path, x_range):
    with pytest.raises(ValueError, match="x_range"):
        activations.plot("x", tmp_path / "x.png", x_range=x_range)


def test_bad_subject_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="expression text, an Expression or a Keras activation layer"):
        activations.plot(42, tmp_path / "x.png")


def test_a_layer_that_is_not_elementwise_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"plot draws elementwise activation layers; .*\(Dense\) maps inputs of shape"):
        activations.plot(keras.layers.Dense(3), tmp_path / "dense.png")
    assert not (tmp_path / "dense.png").exists()


def test_unbuilt_layer_plots_at_its_initial_values():
    layer = activations.ParametricActivation("alpha * x", initial={"alpha": 0.5})
    title, values, slopes = plotting.curves(layer, np.array([-2.0, 2.0]))
    np.testing.assert_allclose(values[:, 0], [-1.0, 1.0])
    np.testing.assert_allclose(slopes, 0.5, rtol=1e-6)
    assert "alpha=0.5" in title


def test_the_suffix_picks_the_image_format_and_bad_arguments_are_named(tmp_path):
    svg = activations.plot("x*sigmoid(beta*x)", tmp_path / "f.svg", parameters={"beta": np.float32(0.5)})
    assert open(svg, "rb").read(5) == b"<?xml"
    assert open(activations.plot("x", tmp_path / "f"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"cannot write a \.jpg image"):
        activations.plot("x", tmp_path / "f.jpg")
    for x_range in [(0, 1, 2), (1, 0), "ab", 3]:
        with pytest.raises(ValueError, match="x_range must be two finite numbers"):
            activations.plot("x", tmp_path / "g.png", x_range=x_range)
    assert not (tmp_path / "g.png").exists() and not (tmp_path / "f.jpg").exists()


def test_a_usual_name_is_drawn_as_that_function_at_its_usual_starting_values():
    x = np.array([-2.0, -1.0, 1.0, 2.0])
    title, values, _ = plotting.curves("prelu", x)  # relu(x) + alpha * min0(x), alpha 0.25
    np.testing.assert_allclose(values[:, 0], [-0.5, -0.25, 1.0, 2.0])
    assert "alpha=0.25" in title
    _, values, _ = plotting.curves("PReLU", x, parameters={"alpha": 0.1})
    np.testing.assert_allclose(values[:, 0], [-0.2, -0.1, 1.0, 2.0])
    _, values, _ = plotting.curves("erf", x)  # a bare unary operator means erf(x)
    assert np.all(np.diff(values[:, 0]) > 0)
    with pytest.raises(ValueError, match=r"^parameters names unknown parameter\(s\) \['gamma'\]"):
        plotting.curves("prelu", x, parameters={"gamma": 1.0})
    with pytest.raises(ValueError, match=r"^parameters\['alpha'\] must be a finite number"):
        plotting.curves("prelu", x, parameters={"alpha": float("nan")})
    with pytest.raises(activations.ExpressionError, match="unknown activation name 'prelux'"):
        plotting.curves("prelux", x)  # not drawn as a constant parameter
