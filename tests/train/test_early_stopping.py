"""Early stopping: what counts as a rise, patience, NaN results, and its state across a resume."""
import math

import pytest

from medft.train.early_stopping import EarlyStopping


def _run(stopper: EarlyStopping, values: list[float]) -> list[tuple[bool, int]]:
    return [(stopper.update(v, epoch), stopper.bad_validations) for epoch, v in enumerate(values)]


def test_patience_counts_validations_without_a_rise_above_min_delta():
    stopper = EarlyStopping(patience=2, min_delta=0.01)
    assert _run(stopper, [0.5, 0.505, 0.9, 0.9, 0.895]) == [(True, 0), (True, 1), (True, 0), (False, 1), (False, 2)]
    assert stopper.should_stop and (stopper.best, stopper.best_epoch) == (0.9, 2)  # best follows any rise


def test_small_rises_that_add_up_to_more_than_min_delta_count():
    """0.008 a validation is under min_delta each time, but two of them clear it over the last counted rise."""
    stopper = EarlyStopping(patience=3, min_delta=0.01)
    assert [bad for _, bad in _run(stopper, [0.5, 0.508, 0.516, 0.524, 0.532])] == [0, 1, 0, 1, 0]
    assert not stopper.should_stop and stopper.best == 0.532


def test_nan_results_never_count_as_a_rise():
    stopper = EarlyStopping(patience=2, min_delta=0.0)
    assert _run(stopper, [math.nan, 0.3, math.nan, math.nan]) == [(False, 1), (True, 0), (False, 1), (False, 2)]
    assert stopper.should_stop and stopper.best == 0.3


def test_the_state_survives_a_resume():
    stopper = EarlyStopping(patience=3, min_delta=0.01)
    _run(stopper, [0.5, 0.508])
    resumed = EarlyStopping(patience=3, min_delta=0.01)
    resumed.load_state_dict(stopper.state_dict())
    assert resumed == stopper
    assert resumed.update(0.516, 2) and resumed.bad_validations == 0  # 0.016 over the last counted rise, 0.5


def test_restarting_patience_counts_afresh_and_keeps_the_best():
    """LP-FT's switch: the probe's validations (0.6 then no rise) do not count against the fine-tuning's patience."""
    stopper = EarlyStopping(patience=2, min_delta=0.01)
    _run(stopper, [0.6, 0.605])
    stopper.restart_patience()
    assert (stopper.bad_validations, stopper.best, stopper.best_epoch) == (0, 0.605, 1)
    assert not stopper.update(0.4, 2) and stopper.bad_validations == 0  # the first validation after sets the baseline
    assert not stopper.update(0.405, 3) and stopper.bad_validations == 1 and not stopper.should_stop
    assert stopper.update(0.7, 4) and stopper.best == 0.7


def test_a_plateau_is_no_rise_even_with_min_delta_zero():
    """With min_delta 0 a rise must still be a rise: a run on a plateau stops after its patience."""
    stopper = EarlyStopping(patience=2, min_delta=0.0)
    assert _run(stopper, [0.5, 0.5, 0.5]) == [(True, 0), (False, 1), (False, 2)]
    assert stopper.should_stop and (stopper.best, stopper.best_epoch) == (0.5, 0)  # the first of equal values stays best


@pytest.mark.parametrize("second, counts", [
    (0.75, False),  # a rise of exactly min_delta (0.5 + 0.25 is exact in binary) does not clear it
    (math.nextafter(0.75, math.inf), True),  # the smallest float above clears it
    (math.nextafter(0.75, -math.inf), False),
])
def test_a_rise_counts_only_above_min_delta(second, counts):
    stopper = EarlyStopping(patience=1, min_delta=0.25)
    assert _run(stopper, [0.5, second]) == [(True, 0), (True, 0 if counts else 1)]  # the best follows any rise
    assert stopper.should_stop is not counts and stopper.best == second
