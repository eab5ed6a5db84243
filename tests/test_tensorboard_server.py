"""Writes a search's TensorBoard logs and checks the real TensorBoard server serves them.

The server (`tensorboard_helpers.TensorBoardServer`) runs as a subprocess on a free loopback
port; the test talks to its HTTP data API and always stops the server.
"""

import time
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pytest
from matplotlib.figure import Figure

from components import tb_summaries as tbs
from tensorboard_helpers import STARTUP_TIMEOUT, TensorBoardServer

FUNCTIONS = ["relu", "swish", "max(relu(x),cosh(elu(x)))"]


def _png(path, k):
    fig = Figure(figsize=(2, 1.5), dpi=50)
    x = np.linspace(-3, 3, 40)
    fig.add_subplot().plot(x, np.tanh(k * x))
    fig.savefig(path)
    return path


def _write_logs(logdir: Path, tmp_path: Path):
    runs = [dict(function=f, seed=s, test_accuracy=0.8 + 0.01 * i + 0.001 * s,
                 val_accuracy=0.79 + 0.01 * i, diverged=False,
                 history={"loss": [1.0, 0.7, 0.5], "val_accuracy": [0.5, 0.7, 0.79]})
            for i, f in enumerate(FUNCTIONS) for s in range(2)]
    trials = [dict(trial_id=f"{g}{k}", expression=f"tanh(x)*{k}" if k else "relu(x)",
                   fitness=0.5 + 0.1 * g, generation=g, history={"val_accuracy": [0.3, 0.5]},
                   activation_stats={"act_01": {"beta": {"mean": 1.0 + g, "min": 1.0, "max": 2.0, "size": 1}}})
              for g in range(2) for k in range(2)]
    names = tbs.write_hparams(logdir, runs, trials)
    image_tags = tbs.write_function_images(
        logdir, {f: _png(tmp_path / f"{i}.png", i + 1) for i, f in enumerate(FUNCTIONS)})
    evolution_tags = tbs.write_evolution(logdir, [
        dict(generation=g, best=0.6 + 0.1 * g, median=0.5 + 0.05 * g, distinct=4, rejected=1,
             duplicates=0, stopped_early=g) for g in range(3)])
    return runs, trials, names, image_tags, evolution_tags


@pytest.fixture
def server(tmp_path):
    logdir = tmp_path / "logs"
    written = _write_logs(logdir, tmp_path)
    srv = TensorBoardServer(logdir, tmp_path / "tensorboard.log")
    try:
        yield srv, written
    finally:
        srv.stop()


def test_tensorboard_serves_scalars_images_and_hparams(server):
    srv, (runs, trials, names, image_tags, evolution_tags) = server
    deadline = time.monotonic() + STARTUP_TIMEOUT

    plugins = srv.wait_for("/data/plugins_listing",
                           lambda a: all(a.get(p, {}).get("enabled")
                                         for p in ("scalars", "images", "hparams")),
                           deadline=deadline)
    assert {"scalars", "images", "hparams"} <= set(plugins)

    # Scalars: per final run, per trial, evolution progress.
    tags = srv.wait_for("/data/plugin/scalars/tags", lambda a: set(names) | {"evolution"} <= set(a),
                        deadline=deadline)
    final = tbs.final_run_name(FUNCTIONS[2], 1)
    assert set(tags[final]) == {"epoch_loss", "epoch_val_accuracy", "test_accuracy",
                                "val_accuracy"}
    assert set(tags[tbs.trial_run_name("11")]) == {"epoch_val_accuracy", "fitness",
                                                   "learned/act_01/beta/mean"}
    assert set(evolution_tags) == {"evolution/best", "evolution/median", "evolution/distinct",
                                   "evolution/rejected", "evolution/duplicates",
                                   "evolution/stopped_early"}
    assert set(evolution_tags) <= set(tags["evolution"])
    best = srv.get("/data/plugin/scalars/scalars?"
                   + urlencode({"run": "evolution", "tag": "evolution/best"}))
    assert [point[1] for point in best] == [0, 1, 2]  # [wall_time, step, value]
    assert [point[2] for point in best] == pytest.approx([0.6, 0.7, 0.8])
    loss = srv.get("/data/plugin/scalars/scalars?" + urlencode({"run": final, "tag": "epoch_loss"}))
    assert [p[2] for p in loss] == pytest.approx([1.0, 0.7, 0.5])

    # Images of the function shapes, with the expression in the description.
    images = srv.wait_for("/data/plugin/images/tags", lambda a: tbs.FUNCTIONS_RUN in a,
                          deadline=deadline)
    shown = images[tbs.FUNCTIONS_RUN]
    assert set(image_tags) == set(shown)
    assert any(FUNCTIONS[2] in info["description"] for info in shown.values())

    # HParams: the experiment declares `activation` with every expression as a discrete value,
    # and the accuracies as metrics; every final run is a session with its values.
    experiment = srv.wait_for("/data/plugin/hparams/experiment", lambda a: a.get("hparamInfos"),
                              body={"experimentName": ""}, deadline=deadline)
    hparams = {h["name"]: h for h in experiment["hparamInfos"]}
    assert {"activation", "seed", "stage", "generation"} <= set(hparams)
    domain = hparams["activation"]["domainDiscrete"]
    # A trial computing a baseline's usual name is shown by that name: one function, one value.
    assert set(domain) == set(FUNCTIONS) | {"tanh(x)*1"}
    assert hparams["activation"]["type"] == "DATA_TYPE_STRING"
    metrics = {m["name"]["tag"] for m in experiment["metricInfos"]}
    assert {"test_accuracy", "val_accuracy", "fitness"} <= metrics

    groups = srv.get("/data/plugin/hparams/session_groups", body={
        "experimentName": "", "startIndex": 0, "sliceSize": 100,
        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                            "STATUS_RUNNING"],
        "colParams": [{"hparam": "activation"}, {"hparam": "seed"},
                      {"metric": {"tag": "test_accuracy"}}]})
    sessions = {s["name"]: (g["hparams"], s["metricValues"])
                for g in groups["sessionGroups"] for s in g["sessions"]}
    for run in runs:
        values, metric_values = sessions[tbs.final_run_name(run["function"], run["seed"])]
        assert values["activation"] == run["function"]
        assert values["seed"] == run["seed"]
        by_tag = {m["name"]["tag"]: m["value"] for m in metric_values}
        assert by_tag["test_accuracy"] == pytest.approx(run["test_accuracy"], rel=1e-6)
    assert sessions[tbs.trial_run_name("00")][0]["activation"] == "relu"  # its text was relu(x)
    assert srv.proc.poll() is None


def test_writers_reject_bad_input(tmp_path):
    with pytest.raises(tbs.SummaryError, match="nothing to write"):
        tbs.write_hparams(tmp_path, [])
    with pytest.raises(tbs.SummaryError, match="'function' and 'seed'"):
        tbs.write_hparams(tmp_path, [{"function": "relu"}])
    with pytest.raises(tbs.SummaryError, match="not found"):
        tbs.write_function_images(tmp_path, {"relu": tmp_path / "nope.png"})
    with pytest.raises(tbs.SummaryError, match="must be numbers"):
        tbs.write_scalars(tmp_path, "r", {"loss": ["a"]})
    assert tbs.slug("max(x,|x|)") != tbs.slug("max(x,-x)")
    assert "/" not in tbs.slug("a/b") and "(" not in tbs.slug("f(x)")
