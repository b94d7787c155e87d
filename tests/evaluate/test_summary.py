"""Summaries of per-case metrics: bootstrap intervals, NaN handling, sites, paired and unpaired differences, per_case.csv."""
import json
import math
import random

import numpy as np
import pytest

from medft.errors import DataError
from medft.evaluate.summary import (
    PER_CASE_COLUMNS,
    bootstrap_ci,
    describe,
    paired_difference,
    read_per_case,
    summarize,
    unpaired_difference,
    write_per_case,
)

NAN = float("nan")
CLASS_NAMES = ["background", "anterior", "posterior"]


def _row(case_id, site, c, dice=NAN, sensitivity=NAN, specificity=NAN, hd95=NAN, nsd=NAN, counts=(0, 0, 0, 0)):
    tp, fp, fn, tn = counts
    return {"case_id": case_id, "site": site, "class_index": c, "class_name": CLASS_NAMES[c], "dice": dice,
            "sensitivity": sensitivity, "specificity": specificity, "hd95": hd95, "nsd": nsd,
            "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def _rows(values: dict[str, tuple[str, float, float]], metric: str = "dice", background: float = 0.0) -> list[dict]:
    """values: case_id -> (site, anterior, posterior) of one metric; background rows get `background`."""
    rows = []
    for case_id, (site, anterior, posterior) in values.items():
        rows += [_row(case_id, site, 0, **{metric: background}), _row(case_id, site, 1, **{metric: anterior}),
                 _row(case_id, site, 2, **{metric: posterior})]
    return rows


# --------------------------------------------------------------------------------------------
# bootstrap_ci and describe
# --------------------------------------------------------------------------------------------
def test_bootstrap_ci_contains_the_mean_and_matches_the_normal_approximation():
    values = np.random.default_rng(1).normal(0.8, 0.1, size=400)
    lo, hi = bootstrap_ci(values)
    mean, se = values.mean(), values.std(ddof=1) / math.sqrt(values.size)
    assert lo < mean < hi
    # for many cases the percentile bootstrap of the mean is close to mean -/+ 1.96 standard errors
    assert lo == pytest.approx(mean - 1.96 * se, abs=0.25 * se)
    assert hi == pytest.approx(mean + 1.96 * se, abs=0.25 * se)
    lo80, hi80 = bootstrap_ci(values, level=0.8)
    assert lo < lo80 < mean < hi80 < hi


def test_bootstrap_ci_is_deterministic_for_a_seed_and_changes_with_another():
    values = np.random.default_rng(2).uniform(0.5, 1.0, size=25)
    assert bootstrap_ci(values, seed=0) == bootstrap_ci(values.copy(), seed=0)
    assert bootstrap_ci(values, seed=0) != bootstrap_ci(values, seed=1)
    assert bootstrap_ci(values, n_resamples=500) != bootstrap_ci(values, n_resamples=2000)


def test_bootstrap_ci_narrows_with_more_cases():
    rng = np.random.default_rng(3)
    widths = []
    for n in (10, 100, 1000):
        lo, hi = bootstrap_ci(rng.normal(0.7, 0.15, size=n))
        widths.append(hi - lo)
    assert widths[0] > 2 * widths[1] > 4 * widths[2]


def test_bootstrap_ci_drops_nan_and_needs_two_values():
    with_nan = np.array([0.2, NAN, 0.9, 0.5, NAN, 0.7])
    assert bootstrap_ci(with_nan) == bootstrap_ci(np.array([0.2, 0.9, 0.5, 0.7]))
    assert all(math.isnan(v) for v in bootstrap_ci(np.array([0.4, NAN])))
    assert all(math.isnan(v) for v in bootstrap_ci(np.array([])))
    assert bootstrap_ci(np.array([0.5, 0.5, 0.5])) == pytest.approx((0.5, 0.5))


def test_describe_counts_nan_and_leaves_it_out():
    d = describe([1.0, 2.0, NAN, 3.0, NAN, 6.0])
    assert set(d) == {"mean", "sd", "median", "ci95", "n", "n_nan"}
    assert (d["mean"], d["median"], d["n"], d["n_nan"]) == (3.0, 2.5, 4, 2)
    assert d["sd"] == pytest.approx(np.std([1, 2, 3, 6], ddof=1))
    assert d["ci95"][0] < 3.0 < d["ci95"][1] and list(d["ci95"]) == list(bootstrap_ci(np.array([1.0, 2, 3, 6])))
    assert all(type(v) is float for k, v in d.items() if k in ("mean", "sd", "median"))
    assert type(d["n"]) is int and type(d["n_nan"]) is int
    one = describe([NAN, 0.4])
    assert one["mean"] == 0.4 and math.isnan(one["sd"]) and all(math.isnan(v) for v in one["ci95"])
    empty = describe([NAN])
    assert math.isnan(empty["mean"]) and (empty["n"], empty["n_nan"]) == (0, 1)


# --------------------------------------------------------------------------------------------
# summarize
# --------------------------------------------------------------------------------------------
CASES = {  # case_id: (site, anterior dice, posterior dice)
    "c1": ("A", 0.80, 0.70),
    "c2": ("A", 0.90, NAN),
    "c3": ("B", 0.60, 0.50),
    "c4": ("B", NAN, NAN),
    "c5": ("", 0.70, 0.90),
    "c6": ("A", 0.85, 0.75),
}


def test_summary_per_class_and_foreground_mean_leave_out_background_and_nan():
    summary = summarize(_rows(CASES, background=0.0), CLASS_NAMES, metrics=("dice",))
    assert summary["classes"] == ["anterior", "posterior"] and summary["n_cases"] == 6
    assert summary["metrics"] == ["dice"]
    assert summary["bootstrap"] == {"resamples": 2000, "seed": 0, "level": 0.95,
                                    "method": "percentile bootstrap of the mean, cases resampled"}
    overall = summary["overall"]
    assert set(overall) == {"anterior", "posterior", "mean_foreground"}
    anterior = overall["anterior"]["dice"]
    assert anterior["mean"] == pytest.approx(np.mean([0.8, 0.9, 0.6, 0.7, 0.85]))
    assert (anterior["n"], anterior["n_nan"]) == (5, 1)
    assert overall["posterior"]["dice"]["mean"] == pytest.approx(np.mean([0.7, 0.5, 0.9, 0.75]))
    assert (overall["posterior"]["dice"]["n"], overall["posterior"]["dice"]["n_nan"]) == (4, 2)
    # per-case foreground means: c1 0.75, c2 0.9 (posterior NaN left out), c3 0.55, c4 NaN, c5 0.8, c6 0.8
    fg = overall["mean_foreground"]["dice"]
    assert fg["mean"] == pytest.approx(np.mean([0.75, 0.9, 0.55, 0.8, 0.8]))
    assert fg["median"] == pytest.approx(0.8) and (fg["n"], fg["n_nan"]) == (5, 1)
    assert fg["ci95"][0] < fg["mean"] < fg["ci95"][1]


def test_summary_groups_sites_with_unknown_for_cases_without_one():
    summary = summarize(_rows(CASES), CLASS_NAMES, metrics=("dice", "hd95"))
    per_site = summary["per_site"]
    assert set(per_site) == {"A", "B", "unknown"}
    assert set(per_site["A"]) == {"anterior", "posterior", "mean_foreground"}
    assert per_site["A"]["anterior"]["dice"]["mean"] == pytest.approx(np.mean([0.8, 0.9, 0.85]))
    assert per_site["B"]["anterior"]["dice"]["n"] == 1 and per_site["B"]["anterior"]["dice"]["n_nan"] == 1
    assert per_site["unknown"]["posterior"]["dice"]["mean"] == pytest.approx(0.9)
    assert per_site["A"]["mean_foreground"]["dice"]["mean"] == pytest.approx(np.mean([0.75, 0.9, 0.8]))
    # all hd95 values are NaN here: counted, and null in JSON
    assert per_site["A"]["anterior"]["hd95"] == {"mean": None, "sd": None, "median": None, "ci95": [None, None],
                                                  "n": 0, "n_nan": 3}
    no_sites = {k: ("", a, p) for k, (_, a, p) in CASES.items()}
    assert "per_site" not in summarize(_rows(no_sites), CLASS_NAMES)


def test_summary_is_json_safe_and_independent_of_row_order():
    rows = _rows(CASES)
    for row in rows:  # the other metrics too, with NaN here and there
        row.update(sensitivity=row["dice"], specificity=0.99, nsd=row["dice"], hd95=NAN if math.isnan(row["dice"]) else 2.0)
    summary = summarize(rows, CLASS_NAMES)
    text = json.dumps(summary, allow_nan=False)
    assert json.loads(text) == summary
    assert summary["per_site"]["unknown"]["anterior"]["dice"]["sd"] is None  # one case: no sd
    assert summary["overall"]["anterior"]["specificity"]["mean"] == pytest.approx(0.99)
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    assert summarize(shuffled, CLASS_NAMES) == summary
    assert summarize(rows, CLASS_NAMES, seed=1) != summary


def test_summary_rejects_rows_that_do_not_fit_the_classes():
    with pytest.raises(ValueError, match="class_index 3"):
        summarize(_rows(CASES) + [dict(_row("c1", "A", 2), class_index=3)], CLASS_NAMES)
    with pytest.raises(ValueError, match="two rows for class_index 1"):
        summarize(_rows(CASES) + [_row("c1", "A", 1, dice=0.1)], CLASS_NAMES)
    with pytest.raises(ValueError, match="unknown metric"):
        summarize(_rows(CASES), CLASS_NAMES, metrics=("jaccard",))


# --------------------------------------------------------------------------------------------
# paired_difference
# --------------------------------------------------------------------------------------------
def test_paired_difference_on_a_known_improvement():
    rng = np.random.default_rng(4)
    base = rng.uniform(0.5, 0.8, size=(20, 2))
    gain = np.stack([0.10 + rng.normal(0, 0.02, 20), -0.05 + rng.normal(0, 0.02, 20)], axis=1)
    a = {f"c{i}": ("", *base[i]) for i in range(20)}
    b = {f"c{i}": ("", *(base[i] + gain[i])) for i in range(20)}
    a["only_a"] = ("", 0.0, 0.0)  # cases in one evaluation only are left out
    b["only_b"] = ("", 1.0, 1.0)
    b["c0"] = ("", NAN, b["c0"][2])  # a NaN on one side leaves that case out of that class
    result = paired_difference(_rows(a), _rows(b), CLASS_NAMES, metric="dice")
    assert (result["metric"], result["difference"]) == ("dice", "b - a")
    assert (result["n_cases_a"], result["n_cases_b"], result["n_common_cases"]) == (21, 21, 20)
    assert result["classes"] == ["anterior", "posterior"]
    anterior, posterior, fg = (result["differences"][k] for k in ("anterior", "posterior", "mean_foreground"))
    assert anterior["n_common"] == 19 and posterior["n_common"] == 20 and fg["n_common"] == 20
    assert anterior["mean_a"] == pytest.approx(base[1:, 0].mean()) and anterior["mean_b"] == pytest.approx((base + gain)[1:, 0].mean())
    assert anterior["mean_diff"] == pytest.approx(gain[1:, 0].mean())
    assert posterior["mean_diff"] == pytest.approx(gain[:, 1].mean())
    assert anterior["ci95"][0] > 0.08 and anterior["ci95"][1] < 0.12
    assert anterior["ci95"][0] < anterior["mean_diff"] < anterior["ci95"][1]
    assert posterior["ci95"][1] < 0  # a significant loss for posterior
    # per-case foreground means: c0 has only posterior under b
    fg_a = base.mean(axis=1)
    fg_b = (base + gain).mean(axis=1)
    fg_b[0] = (base + gain)[0, 1]
    assert fg["mean_diff"] == pytest.approx((fg_b - fg_a).mean())
    # the paired interval is the bootstrap of the per-case differences, cases in case_id order
    order = sorted(range(20), key=lambda i: f"c{i}")
    diffs = (base + gain)[order, 1] - base[order, 1]
    assert posterior["ci95"] == list(bootstrap_ci(diffs))
    json.dumps(result, allow_nan=False)


def test_paired_difference_of_an_evaluation_with_itself_is_zero_and_unpaired_is_null():
    rows = _rows(CASES)
    same = paired_difference(rows, rows, CLASS_NAMES)
    assert same["differences"]["anterior"]["mean_diff"] == 0.0 and same["differences"]["anterior"]["ci95"] == [0.0, 0.0]
    other = paired_difference(rows, _rows({"x": ("", 0.5, 0.5)}), CLASS_NAMES)
    assert other["n_common_cases"] == 0
    assert other["differences"]["anterior"] == {"n_common": 0, "mean_a": None, "mean_b": None, "mean_diff": None,
                                                "ci95": [None, None]}


def _without(rows: list[dict], case_id: str, class_index: int) -> list[dict]:
    return [r for r in rows if (r["case_id"], r["class_index"]) != (case_id, class_index)]


def test_paired_difference_pairs_by_case_when_an_evaluation_lacks_a_class_row():
    """A class row missing on one side counts as that case's value missing (as a NaN): the case leaves that class's
    comparison, the others stay paired with themselves. It used to end in an IndexError (one row missing of two
    cases), or, when each side lacked a row of another case, to pair one case's value with another's in silence."""
    a = _rows({"c1": ("", 0.5, 0.5), "c2": ("", 0.6, 0.25), "c3": ("", 0.75, 0.5)})
    b = _rows({"c1": ("", 0.625, 0.5), "c2": ("", 0.9, 0.5), "c3": ("", 0.875, 0.75)})
    one_missing = paired_difference(a[:6], _without(b[:6], "c2", 1), CLASS_NAMES)  # c1 and c2; B lacks c2's anterior
    anterior = one_missing["differences"]["anterior"]
    assert (anterior["n_common"], anterior["mean_a"], anterior["mean_b"], anterior["mean_diff"]) == (1, 0.5, 0.625, 0.125)
    assert one_missing["differences"]["posterior"]["mean_diff"] == 0.125  # c2's posterior rose by 0.25, c1's not

    crossed = paired_difference(_without(a, "c1", 1), _without(b, "c2", 1), CLASS_NAMES)
    anterior = crossed["differences"]["anterior"]
    assert (anterior["n_common"], anterior["mean_a"], anterior["mean_b"], anterior["mean_diff"]) == (1, 0.75, 0.875, 0.125)
    assert crossed["n_common_cases"] == 3 and crossed["differences"]["posterior"]["n_common"] == 3
    # the foreground mean of a case is that of the classes it has on each side, as with a NaN
    fg = crossed["differences"]["mean_foreground"]
    assert fg["mean_a"] == pytest.approx(np.mean([0.5, 0.425, 0.625])) and fg["mean_b"] == pytest.approx(np.mean([0.5625, 0.5, 0.8125]))
    json.dumps(crossed, allow_nan=False)


# --------------------------------------------------------------------------------------------
# unpaired_difference
# --------------------------------------------------------------------------------------------
def _disjoint(n_a: int, n_b: int, seed: int, shift: float = 0.0) -> tuple[dict, dict]:
    """Two case sets with no common id: A ~ U(0.5, 0.9) per class, B the same law moved by shift."""
    rng = np.random.default_rng(seed)
    a = {f"a{i:03d}": ("north", *rng.uniform(0.5, 0.9, 2)) for i in range(n_a)}
    b = {f"b{i:03d}": ("south", *(rng.uniform(0.5, 0.9, 2) + shift)) for i in range(n_b)}
    return a, b


def test_unpaired_difference_compares_the_means_of_two_case_sets_dropping_nan_per_side():
    a = {"c1": ("", 0.60, 0.70), "c2": ("", 0.80, NAN), "c3": ("", NAN, 0.50), "c4": ("", 0.70, 0.90)}
    b = {"x1": ("", 0.90, 0.60), "x2": ("", 0.70, 0.80), "x3": ("", 0.80, NAN)}
    result = unpaired_difference(_rows(a), _rows(b), CLASS_NAMES, metric="dice", n_resamples=500, seed=3)
    assert set(result) == {"metric", "difference", "bootstrap", "n_cases_a", "n_cases_b", "classes", "differences"}
    assert (result["metric"], result["difference"], result["classes"]) == ("dice", "b - a", ["anterior", "posterior"])
    assert result["bootstrap"] == {"resamples": 500, "seed": 3, "level": 0.95, "method": (
        "percentile bootstrap of the difference of means, each evaluation's cases resampled independently")}
    assert (result["n_cases_a"], result["n_cases_b"]) == (4, 3)
    anterior, posterior, fg = (result["differences"][k] for k in ("anterior", "posterior", "mean_foreground"))
    assert set(anterior) == {"n_a", "n_b", "mean_a", "mean_b", "mean_diff", "ci95"}
    assert (anterior["n_a"], anterior["n_b"], posterior["n_a"], posterior["n_b"]) == (3, 3, 3, 2)
    assert anterior["mean_a"] == pytest.approx(0.7) and anterior["mean_b"] == pytest.approx(0.8)
    assert anterior["mean_diff"] == pytest.approx(0.1)
    assert posterior["mean_diff"] == pytest.approx(0.7 - 0.7, abs=1e-12)
    # per-case foreground means, their NaN classes left out: A 0.65, 0.8, 0.5, 0.8; B 0.75, 0.75, 0.8
    assert (fg["n_a"], fg["n_b"]) == (4, 3)
    assert fg["mean_diff"] == pytest.approx(2.3 / 3 - 2.75 / 4)
    # the interval: A's values resampled first, then B's, from one generator seeded with `seed`
    rng = np.random.default_rng(3)
    va, vb = np.array([0.6, 0.8, 0.7]), np.array([0.9, 0.7, 0.8])
    means_a = va[rng.integers(0, 3, size=(500, 3))].mean(axis=1)
    means_b = vb[rng.integers(0, 3, size=(500, 3))].mean(axis=1)
    assert anterior["ci95"] == pytest.approx(list(np.quantile(means_b - means_a, [0.025, 0.975])), abs=1e-12)
    assert anterior["ci95"][0] < anterior["mean_diff"] < anterior["ci95"][1]
    json.dumps(result, allow_nan=False)


def test_unpaired_difference_needs_two_values_on_each_side_for_an_interval():
    a = {"c1": ("", 0.6, 0.7), "c2": ("", 0.8, NAN), "c3": ("", NAN, NAN)}
    b = {"x1": ("", 0.9, NAN), "x2": ("", 0.7, NAN)}
    result = unpaired_difference(_rows(a), _rows(b), CLASS_NAMES)
    anterior, posterior = result["differences"]["anterior"], result["differences"]["posterior"]
    assert anterior["ci95"][0] is not None and anterior["mean_diff"] == pytest.approx(0.1)
    # posterior: one value in A, none in B
    assert posterior == {"n_a": 1, "n_b": 0, "mean_a": 0.7, "mean_b": None, "mean_diff": None, "ci95": [None, None]}
    one = unpaired_difference(_rows(a), _rows({"x1": ("", 0.9, 0.5)}), CLASS_NAMES)["differences"]["anterior"]
    assert one["mean_diff"] == pytest.approx(0.2) and one["ci95"] == [None, None]


def test_unpaired_difference_is_deterministic_for_a_seed_and_independent_of_row_order():
    a, b = _disjoint(15, 20, seed=5, shift=0.05)
    rows_a, rows_b = _rows(a), _rows(b)
    first = unpaired_difference(rows_a, rows_b, CLASS_NAMES, seed=0)
    random.Random(0).shuffle(rows_a)
    random.Random(1).shuffle(rows_b)
    assert unpaired_difference(rows_a, rows_b, CLASS_NAMES, seed=0) == first
    other = unpaired_difference(rows_a, rows_b, CLASS_NAMES, seed=1)
    assert other["differences"]["anterior"]["ci95"] != first["differences"]["anterior"]["ci95"]
    assert other["differences"]["anterior"]["mean_diff"] == first["differences"]["anterior"]["mean_diff"]


def test_unpaired_difference_of_a_shifted_copy_and_its_interval_width():
    """B = A's values + 0.05 under other ids: the difference is the shift, with a real (non-zero) interval."""
    a, _ = _disjoint(40, 0, seed=6)
    b = {f"b{k}": (site, va + 0.05, vp + 0.05) for k, (site, va, vp) in a.items()}
    result = unpaired_difference(_rows(a), _rows(b), CLASS_NAMES)
    paired_same_ids = paired_difference(_rows(a), _rows({k[1:]: v for k, v in b.items()}), CLASS_NAMES)
    for key in ("anterior", "posterior", "mean_foreground"):
        d = result["differences"][key]
        assert d["mean_diff"] == pytest.approx(0.05, abs=1e-12)
        lo, hi = d["ci95"]
        assert lo < 0.05 < hi
        # independent resampling of the two sides: about 1.96 * sqrt(var_a / n_a + var_b / n_b) each way
        per_case = {"anterior": lambda v: v[1], "posterior": lambda v: v[2], "mean_foreground": lambda v: (v[1] + v[2]) / 2}
        values = np.array([per_case[key](v) for v in a.values()])
        half = 1.96 * math.sqrt(2 * values.var(ddof=1) / values.size)
        assert (hi - lo) / 2 == pytest.approx(half, rel=0.2)
        p_lo, p_hi = paired_same_ids["differences"][key]["ci95"]
        assert p_hi - p_lo < 1e-9 < hi - lo  # the paired interval of a constant shift has no width


def test_unpaired_interval_narrows_with_more_cases():
    widths = []
    for n in (10, 100, 1000):
        a, b = _disjoint(n, n, seed=7, shift=0.03)
        lo, hi = unpaired_difference(_rows(a), _rows(b), CLASS_NAMES, n_resamples=1000)["differences"]["anterior"]["ci95"]
        widths.append(hi - lo)
    assert widths[0] > 2 * widths[1] > 4 * widths[2]


# --------------------------------------------------------------------------------------------
# per_case.csv
# --------------------------------------------------------------------------------------------
def _assert_same_rows(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert list(g) == list(PER_CASE_COLUMNS)
        for key in PER_CASE_COLUMNS:
            if isinstance(e[key], float) and math.isnan(e[key]):
                assert isinstance(g[key], float) and math.isnan(g[key]), key
            else:
                assert g[key] == e[key] and type(g[key]) is type(e[key]), (key, g[key], e[key])


def test_per_case_csv_round_trips_exactly(tmp_path):
    rows = [
        _row("hippocampus_334", "A", 0, 0.9987654321234567, 1.0, 0.0, NAN, NAN, (123456, 7, 8, 9)),
        _row("hippocampus_334", "A", 1, 1 / 3, 2 / 3, 0.999999999999, 1.4142135623730951, 0.5, (10, 0, 5, 100000)),
        _row("odd, \"id\"", "", 2, NAN, NAN, 1e-7, 123456789.125, 0.0, (0, 0, 0, 42)),
        _row("big", "site B", 1, 0.1, 2.5e-12, 1.0, 1e22, 1.0, (2**40, 1, 2, 3)),
    ]
    path = write_per_case(tmp_path / "per_case.csv", rows)
    text = path.read_text()
    lines = text.splitlines()
    assert lines[0] == ",".join(PER_CASE_COLUMNS)
    assert lines[1] == "hippocampus_334,A,0,background,0.9987654321234567,1.0,0.0,,,123456,7,8,9"
    assert "e-" not in text and "e+" not in text and "nan" not in text.lower()  # plain decimals, NaN empty
    assert "0.0000001" in text and "10000000000000000000000.0" in text
    back = read_per_case(path)
    _assert_same_rows(back, rows)
    again = write_per_case(tmp_path / "again.csv", back)
    assert again.read_bytes() == path.read_bytes()


def test_per_case_csv_takes_numpy_and_torch_numbers_and_rejects_a_wrong_header(tmp_path):
    import torch

    row = _row("x", "", 1, np.float32(0.5), torch.tensor(0.25, dtype=torch.float64), np.float64(NAN), 3.0, 1.0,
               (np.int64(4), torch.tensor(5), 6.0, 7))
    back = read_per_case(write_per_case(tmp_path / "per_case.csv", [row]))
    assert back[0]["dice"] == 0.5 and back[0]["sensitivity"] == 0.25 and math.isnan(back[0]["specificity"])
    assert [back[0][k] for k in ("tp", "fp", "fn", "tn")] == [4, 5, 6, 7]
    with pytest.raises(ValueError, match="tp must be an integer"):
        write_per_case(tmp_path / "bad.csv", [dict(row, tp=1.5)])
    with pytest.raises(ValueError, match="lacks nsd"):
        write_per_case(tmp_path / "bad.csv", [{k: v for k, v in row.items() if k != "nsd"}])
    bad = tmp_path / "wrong.csv"
    bad.write_text("case_id,dice\nx,0.5\n")
    with pytest.raises(DataError, match="not the per_case.csv columns"):
        read_per_case(bad)
    bad.write_text(",".join(PER_CASE_COLUMNS) + "\nx,,1,anterior,zero,,,,,1,2,3,4\n")
    with pytest.raises(DataError, match="line 2 .*not a number"):
        read_per_case(bad)
