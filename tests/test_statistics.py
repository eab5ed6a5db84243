"""Tests for the evaluator statistics: tests against the baseline, Holm, win/tie/loss, blessing."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from components import statistics as st


def _runs(function, values, seeds=None, **extra):
    seeds = range(len(values)) if seeds is None else seeds
    return [dict(function=function, seed=int(s), test_accuracy=float(v), val_accuracy=float(v),
                 diverged=False, **extra) for v, s in zip(values, seeds)]


def _normal(mean, n, rng, sd=0.004):
    return list(mean + rng.normal(0.0, sd, size=n))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def test_clear_gain_is_blessed_with_small_p(rng):
    runs = _runs("relu", _normal(0.90, 6, rng)) + _runs("swish", _normal(0.93, 6, rng))
    ev = st.evaluate(runs)
    swish = ev["swish"]
    assert swish.welch_p < 1e-4
    assert swish.mannwhitney_p < 0.01
    # Only one function compared: Holm leaves the p-values unchanged.
    assert swish.welch_p_holm == pytest.approx(swish.welch_p)
    assert swish.verdict == st.BLESSED
    assert ev.blessed and ev.winner.function == "swish"
    assert swish.diff == pytest.approx(np.mean(swish.values) - np.mean(ev["relu"].values))
    assert ev.summary.startswith("swish beat relu")
    # Matches scipy called directly.
    expected = stats.ttest_ind(swish.values, ev["relu"].values, equal_var=False).pvalue
    assert swish.welch_p == pytest.approx(expected)


def test_same_distribution_is_not_significant(rng):
    base = _normal(0.90, 8, rng)
    runs = _runs("relu", base) + _runs("same", list(base[::-1]))  # identical values, other order
    ev = st.evaluate(runs)
    same = ev["same"]
    assert same.welch_p == pytest.approx(1.0)
    assert same.mannwhitney_p == pytest.approx(1.0)
    assert same.verdict == st.NOT_BLESSED
    assert not ev.blessed
    assert ev.summary.startswith("No function beat relu")


def test_noise_alone_is_rarely_blessed():
    # 200 experiments where the candidate is drawn from the baseline's distribution:
    # the false-blessing rate must stay near (below) alpha.
    rng = np.random.default_rng(7)
    blessed = 0
    for _ in range(200):
        runs = _runs("relu", _normal(0.9, 5, rng)) + _runs("same", _normal(0.9, 5, rng))
        blessed += st.evaluate(runs).blessed
    assert blessed / 200 < 0.06


def test_holm_is_monotone_and_never_below_raw():
    raw = [0.01, 0.04, 0.03, 0.2, 0.0001, 0.5]
    adjusted = st.holm(raw)
    assert all(a >= r for a, r in zip(adjusted, raw))
    assert all(a <= 1.0 for a in adjusted)
    order = np.argsort(raw)
    in_order = [adjusted[i] for i in order]
    assert in_order == sorted(in_order)
    # Hand-computed: sorted raw 0.0001,0.01,0.03,0.04,0.2,0.5 times 6,5,4,3,2,1.
    assert adjusted[4] == pytest.approx(0.0006)
    assert adjusted[0] == pytest.approx(0.05)
    assert adjusted[2] == pytest.approx(0.12)
    assert adjusted[1] == pytest.approx(0.12)  # 3*0.04 = 0.12, held up by monotonicity
    assert adjusted[5] == pytest.approx(0.5)
    assert st.holm([]) == []
    with pytest.raises(st.EvaluationError, match="p-values"):
        st.holm([0.1, 1.5])


def test_holm_applied_per_family_across_functions(rng):
    runs = _runs("relu", _normal(0.90, 6, rng))
    for name, mean in [("a", 0.91), ("b", 0.905), ("c", 0.92)]:
        runs += _runs(name, _normal(mean, 6, rng))
    ev = st.evaluate(runs)
    candidates = [f for f in ev.functions if not f.is_baseline]
    assert len(candidates) == 3
    welch = st.holm([f.welch_p for f in candidates])
    mwu = st.holm([f.mannwhitney_p for f in candidates])
    for f, w, m in zip(candidates, welch, mwu):
        assert f.welch_p_holm == pytest.approx(w)
        assert f.mannwhitney_p_holm == pytest.approx(m)
        assert f.welch_p_holm >= f.welch_p
    # With three comparisons the smallest p is multiplied by three.
    smallest = min(candidates, key=lambda f: f.welch_p)
    assert smallest.welch_p_holm == pytest.approx(min(1.0, 3 * smallest.welch_p))


def test_correction_can_revoke_a_blessing():
    # Raw Welch p just under 0.05 for the candidate; a second (useless) candidate doubles it.
    base = [0.900, 0.905, 0.910, 0.895, 0.900]
    good = [0.910, 0.915, 0.908, 0.912, 0.906]
    alone = st.evaluate(_runs("relu", base) + _runs("good", good))
    raw_p = alone["good"].welch_p
    assert 0.0 < raw_p < 0.05
    flop = [0.901, 0.899, 0.902, 0.904, 0.898]
    both = st.evaluate(_runs("relu", base) + _runs("good", good) + _runs("flop", flop))
    assert both["good"].welch_p == pytest.approx(raw_p)
    # good has the smaller of two p-values: Holm doubles it, past alpha.
    assert both["flop"].welch_p > raw_p
    assert both["good"].welch_p_holm == pytest.approx(2 * raw_p)
    assert 2 * raw_p > 0.05
    assert alone["good"].verdict == st.BLESSED
    assert both["good"].verdict == st.NOT_BLESSED
    assert "Holm-corrected Welch" in both["good"].reason
    # The uncorrected rule would still bless it: the governing p-value is configurable.
    uncorrected = st.evaluate(_runs("relu", base) + _runs("good", good) + _runs("flop", flop),
                              blessing_p="welch")
    assert uncorrected["good"].verdict == st.BLESSED
    assert "uncorrected Welch" in uncorrected["good"].reason


def test_mann_whitney_can_govern():
    base = [0.90, 0.901, 0.902]
    good = [0.95, 0.951, 0.952]
    ev = st.evaluate(_runs("relu", base) + _runs("good", good), blessing_p="mannwhitney_holm")
    # Three seeds a side: the exact two-sided Mann-Whitney p cannot go below 0.1.
    assert ev["good"].mannwhitney_p == pytest.approx(0.1)
    assert ev["good"].verdict == st.NOT_BLESSED
    assert st.evaluate(_runs("relu", base) + _runs("good", good))["good"].verdict == st.BLESSED


def test_too_few_seeds_gives_no_p_value(rng):
    runs = _runs("relu", _normal(0.9, 2, rng)) + _runs("swish", [0.99, 0.98])
    ev = st.evaluate(runs)
    swish = ev["swish"]
    assert swish.welch_p is None and swish.mannwhitney_p is None
    assert swish.welch_p_holm is None
    assert "too few seeds for a test (n=2" in swish.p_note
    assert swish.verdict == st.NOT_BLESSED
    assert "too few seeds" in swish.reason
    assert ev.summary.startswith("No function beat relu")
    assert "too few seeds for a test (n=2" in ev.summary
    # min_seeds is configurable.
    assert st.evaluate(runs, min_seeds=2)["swish"].welch_p is not None


def test_single_run_has_no_spread():
    ev = st.evaluate(_runs("relu", [0.9]) + _runs("x", [0.8]))
    assert ev["x"].std is None and ev["x"].ci_low is None
    assert ev["x"].p_note.startswith("too few seeds")


def test_zero_variance_gives_no_p_value():
    ev = st.evaluate(_runs("relu", [0.9] * 4) + _runs("flat", [0.95] * 4))
    assert ev["flat"].welch_p is None
    assert "zero variance" in ev["flat"].p_note
    assert ev["flat"].verdict == st.NOT_BLESSED
    # One side constant is still testable with Welch.
    ev = st.evaluate(_runs("relu", [0.9] * 4) + _runs("var", [0.95, 0.96, 0.94, 0.95]))
    assert ev["var"].welch_p is not None and ev["var"].welch_p < 0.01


def test_nothing_beats_baseline_says_so(rng):
    runs = _runs("relu", _normal(0.90, 5, rng))
    runs += _runs("worse", _normal(0.85, 5, rng)) + _runs("worst", _normal(0.80, 5, rng))
    ev = st.evaluate(runs)
    assert not ev.blessed and ev.winner is None and ev.verdict == st.NOT_BLESSED
    assert ev.summary.startswith("No function beat relu:")
    assert "at or below" in ev.summary
    # Significantly worse is still NOT_BLESSED, never BLESSED.
    assert ev["worst"].welch_p < 0.01 and ev["worst"].verdict == st.NOT_BLESSED


def test_threshold_blocks_small_significant_gains():
    base = [0.900, 0.901, 0.899, 0.900, 0.902]
    gain = [0.905, 0.906, 0.904, 0.905, 0.907]  # +0.5 pp, very significant
    runs = _runs("relu", base) + _runs("tiny", gain)
    assert st.evaluate(runs, threshold=0.0)["tiny"].verdict == st.BLESSED
    for bad in (-0.1, float("nan")):  # a negative bar would bless significantly worse functions
        with pytest.raises(st.EvaluationError, match="threshold must be a finite number >= 0"):
            st.evaluate(runs, threshold=bad)
    blocked = st.evaluate(runs, threshold=0.01)
    assert blocked["tiny"].verdict == st.NOT_BLESSED
    assert "threshold" in blocked["tiny"].reason
    assert "threshold" in blocked.summary
    assert st.evaluate(runs, alpha=1e-9)["tiny"].verdict == st.NOT_BLESSED


def test_win_tie_loss_paired_by_seed():
    base = [0.90, 0.91, 0.92, 0.93, 0.94]
    cand = [0.95, 0.91, 0.80, 0.96, 0.90]  # win, tie, loss, win, loss
    ev = st.evaluate(_runs("relu", base) + _runs("c", cand))
    c = ev["c"]
    assert (c.wins, c.ties, c.losses) == (2, 1, 2)
    assert c.pairing == "seed"
    assert c.win_tie_loss == "2/1/2"
    # A tolerance turns near-equal seeds into ties.
    c = st.evaluate(_runs("relu", base) + _runs("c", [0.905, 0.91, 0.80, 0.96, 0.90]),
                    tie_tolerance=0.01)["c"]
    assert (c.wins, c.ties, c.losses) == (1, 2, 2)


def test_win_tie_loss_falls_back_to_baseline_median():
    base = [0.90, 0.92, 0.94]  # median 0.92
    ev = st.evaluate(_runs("relu", base, seeds=[0, 1, 2])
                     + _runs("c", [0.93, 0.92, 0.91, 0.95], seeds=[10, 11, 12, 1]))
    c = ev["c"]
    # seeds 10, 11, 12 vs median 0.92: win, tie, loss; seed 1 vs its paired 0.92: win.
    assert (c.wins, c.ties, c.losses) == (2, 1, 1)
    assert c.pairing == "mixed"
    only_median = st.evaluate(_runs("relu", base) + _runs("c", [0.93, 0.91, 0.95],
                                                          seeds=[7, 8, 9]))["c"]
    assert only_median.pairing == "median"
    assert (only_median.wins, only_median.ties, only_median.losses) == (2, 0, 1)


def test_confidence_interval_contains_mean_and_shrinks_with_n():
    rng = np.random.default_rng(3)
    widths = []
    for n in (3, 10, 40):
        # Same sample standard deviation at every n, so only n changes the width.
        noise = rng.normal(size=n)
        cand = 0.9 + 0.004 * (noise - noise.mean()) / noise.std(ddof=1)
        ev = st.evaluate(_runs("relu", _normal(0.9, n, rng)) + _runs("c", list(cand)))
        c = ev["c"]
        assert c.ci_low < c.mean < c.ci_high
        assert c.mean == pytest.approx(np.mean(c.values))
        assert c.std == pytest.approx(np.std(c.values, ddof=1))
        half = stats.t.ppf(0.975, n - 1) * c.std / math.sqrt(n)
        assert c.ci_high - c.mean == pytest.approx(half)
        widths.append(c.ci_high - c.ci_low)
    assert widths[0] > widths[1] > widths[2]



def test_an_accuracys_confidence_interval_stays_within_0_and_1_and_other_metrics_are_not_cut():
    near_top = [0.992, 0.981, 0.999]
    runs = _runs("relu", [0.90, 0.91, 0.92]) + _runs("c", near_top)
    c = st.evaluate(runs)["c"]
    half = stats.t.ppf(0.975, 2) * np.std(near_top, ddof=1) / math.sqrt(3)
    assert np.mean(near_top) + half > 1  # the bare t-interval reaches past 100%
    assert c.ci_high == 1.0 and c.ci_low == pytest.approx(np.mean(near_top) - half)
    loss = [dict(r, loss=r["test_accuracy"] + 0.1) for r in runs]  # unbounded: the whole interval
    assert st.evaluate(loss, metric="loss")["c"].ci_high == pytest.approx(np.mean(near_top) + 0.1 + half)

def test_diverged_runs_count_as_failures():
    base = [0.90, 0.91, 0.92]
    runs = _runs("relu", base) + _runs("wild", [0.93, 0.94])
    runs.append(dict(function="wild", seed=2, test_accuracy=float("nan"), diverged=True,
                     num_classes=10))
    runs.append(dict(function="wild", seed=3, test_accuracy=0.5, diverged=True))
    ev = st.evaluate(runs)
    wild = ev["wild"]
    assert wild.n == 4 and wild.n_diverged == 2
    # NaN -> chance (1/num_classes), recorded finite accuracy kept as is.
    assert sorted(wild.values) == pytest.approx([0.1, 0.5, 0.93, 0.94])
    assert wild.verdict == st.NOT_BLESSED
    assert st.evaluate(runs, chance=0.25)["wild"].values[2] == pytest.approx(0.25)
    # Without num_classes or chance a diverged run without accuracy scores 0.
    runs.append(dict(function="wild", seed=4, test_accuracy=None, diverged=True))
    assert st.evaluate(runs)["wild"].values[-1] == 0.0


def test_bad_input_errors_are_clear():
    with pytest.raises(st.EvaluationError, match="no runs"):
        st.evaluate([])
    with pytest.raises(st.EvaluationError, match="baseline 'relu' has no runs.*swish"):
        st.evaluate(_runs("swish", [0.9, 0.91, 0.92]))
    with pytest.raises(st.EvaluationError, match="finite number.*diverged=True"):
        st.evaluate([dict(function="relu", seed=0, test_accuracy=float("nan"))])
    with pytest.raises(st.EvaluationError, match="lacks"):
        st.evaluate([dict(function="relu", test_accuracy=0.9)])
    with pytest.raises(st.EvaluationError, match="seed must be an integer"):
        st.evaluate([dict(function="relu", seed="a", test_accuracy=0.9)])
    with pytest.raises(st.EvaluationError, match="alpha"):
        st.evaluate(_runs("relu", [0.9]), alpha=1.5)
    with pytest.raises(st.EvaluationError, match="blessing_p"):
        st.evaluate(_runs("relu", [0.9]), blessing_p="bonferroni")
    with pytest.raises(st.EvaluationError, match="min_seeds"):
        st.evaluate(_runs("relu", [0.9]), min_seeds=1)
    with pytest.raises(st.EvaluationError, match="list of run records"):
        st.evaluate("relu")
    assert issubclass(st.EvaluationError, ValueError)


def test_baseline_only_and_custom_baseline_and_metric(rng):
    ev = st.evaluate(_runs("relu", [0.9, 0.91]))
    assert "Only the baseline" in ev.summary and not ev.blessed
    runs = _runs("gelu", _normal(0.9, 4, rng)) + _runs("relu", _normal(0.95, 4, rng))
    ev = st.evaluate(runs, baseline="gelu", metric="val_accuracy")
    assert ev.functions[0].function == "gelu" and ev.functions[0].is_baseline
    assert ev["relu"].verdict == st.BLESSED
    assert ev.summary.startswith("relu beat gelu")


def test_json_round_trip_and_blessing_files(tmp_path, rng):
    runs = _runs("relu", _normal(0.90, 4, rng)) + _runs("swish", _normal(0.95, 4, rng))
    runs += _runs("few", [0.99, 0.98])
    ev = st.evaluate(runs)
    data = json.loads(ev.to_json())
    assert data["verdict"] == st.BLESSED and data["winner"] == "swish"
    assert data["functions"][0]["verdict"] == st.BASELINE
    assert data["functions"][0]["welch_p"] is None
    assert st.Evaluation.from_json(ev.to_json()) == ev
    path = st.write_evaluation(tmp_path, ev)
    assert json.loads(path.read_text())["summary"] == ev.summary
    assert (tmp_path / "BLESSED").exists() and not (tmp_path / "NOT_BLESSED").exists()
    # Rewriting with a failing evaluation replaces the marker.
    st.write_evaluation(tmp_path, st.evaluate(_runs("relu", [0.9, 0.91, 0.92])
                                              + _runs("x", [0.8, 0.81, 0.82])))
    assert (tmp_path / "NOT_BLESSED").exists() and not (tmp_path / "BLESSED").exists()


def test_functions_are_ordered_baseline_first_then_by_mean(rng):
    runs = _runs("relu", [0.9, 0.91, 0.92])
    for name, mean in [("low", 0.8), ("high", 0.95), ("mid", 0.88)]:
        runs += _runs(name, _normal(mean, 3, rng))
    assert [f.function for f in st.evaluate(runs).functions] == ["relu", "high", "mid", "low"]


def test_a_gain_that_rounds_to_zero_is_never_written_with_a_minus_sign():
    runs = _runs("relu", [0.90, 0.91, 0.92]) + _runs("same", [0.90, 0.91, 0.91999])
    ev = st.evaluate(runs)
    assert ev["same"].diff < 0
    assert "gain +0.00 pp is not above the threshold +0.00 pp" in ev["same"].reason
    assert "(best: same, +0.00 pp)" in ev.summary
    assert st.percentage_points(-0.0091) == "-0.91 pp" and st.percentage_points(0.0123) == "+1.23 pp"


def test_a_lost_run_is_no_evidence_and_is_left_out():
    """A run whose process died (written off by the fan-out) is not a diverged run at chance."""
    runs = _runs("relu", [0.90, 0.91, 0.92]) + _runs("elu", [0.93, 0.94, 0.95])
    lost = dict(_runs("relu", [0.1], seeds=[3])[0], lost=True, diverged=True)
    with_lost, without = st.evaluate(runs + [lost]), st.evaluate(runs)
    assert with_lost["relu"].values == without["relu"].values and with_lost["relu"].n_diverged == 0


def _lost(function, seeds):
    return [dict(function=function, seed=s, test_accuracy=None, diverged=False, lost=True,
                 lost_reason="started 3 times without progress and never finished") for s in seeds]


def test_a_baseline_whose_runs_were_all_lost_is_named_as_lost_not_as_untrained():
    runs = _lost("relu", [0, 1, 2]) + _runs("swish", [0.9, 0.91, 0.92])
    with pytest.raises(st.EvaluationError) as error:
        st.evaluate(runs)
    message = str(error.value)
    assert message.startswith("baseline 'relu' has no runs left: its 3 runs (seeds 0, 1, 2) were lost")
    assert "Train the baseline" not in message and "`.attempts` and result" in message and "swish" in message


def test_without_lost_records_a_missing_baseline_still_says_lost_runs_are_left_out():
    with pytest.raises(st.EvaluationError, match=r"has no runs; .*swish.*Runs lost to dead training processes "
                                                 r".*left out: .*`\.attempts` and result .*resume directory"):
        st.evaluate(_runs("swish", [0.9, 0.91, 0.92]))
    with pytest.raises(st.EvaluationError, match=r"no runs to evaluate.*every run was lost.*relu \(seed 0\)"):
        st.evaluate(_lost("relu", [0]))


def test_a_candidate_whose_runs_were_all_lost_is_named_in_the_summary(rng):
    runs = _runs("relu", _normal(0.90, 4, rng)) + _runs("swish", _normal(0.93, 4, rng)) + _lost("gelu", [0, 1])
    runs += _lost("swish", [4])  # partly lost: compared on the runs it has, not named
    ev = st.evaluate(runs)
    assert [f.function for f in ev.functions] == ["relu", "swish"] and ev["swish"].n == 4
    assert ev.summary.startswith("swish beat relu")
    assert ("Not compared, every run lost (the training process died at every start: out of memory or killed, "
            "not a property of the function): gelu (seeds 0, 1);") in ev.summary
    assert "swish (seed" not in ev.summary
    assert st.Evaluation.from_json(ev.to_json()).summary == ev.summary
