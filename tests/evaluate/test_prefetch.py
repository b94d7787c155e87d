"""The next case loads in a background thread while the current one is predicted, one case ahead at most."""
import threading
from contextlib import closing

import pytest

from medft.evaluate.prefetch import THREAD_NAME, prefetched

WAIT = 10  # seconds: a bound for a test that fails, never reached when it passes


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME)]


def test_items_come_in_order_with_the_next_one_loading_meanwhile_and_no_further():
    started: list[int] = []
    second_started = threading.Event()

    def load(item: int) -> int:
        started.append(item)
        if item == 1:
            second_started.set()
        return item * 10

    seen = []
    for item, loaded in prefetched(range(5), load):
        if item == 0:
            assert second_started.wait(WAIT), "item 1 loads while item 0 is worked on"
        seen.append((item, loaded, len(started)))
    assert [(item, loaded) for item, loaded, _ in seen] == [(i, i * 10) for i in range(5)]
    assert all(count <= item + 2 for item, _, count in seen), f"more than one item ahead: {seen}"
    assert started == list(range(5)) and not _prefetch_threads()


def test_a_failed_load_is_handed_over_with_its_item_and_the_others_go_on():
    def load(item: int) -> int:
        if item % 2:
            raise ValueError(f"item {item} is unreadable")
        return item

    outcomes = list(prefetched(range(4), load))
    assert [item for item, _ in outcomes] == [0, 1, 2, 3]
    assert [outcomes[0][1], outcomes[2][1]] == [0, 2]
    assert [str(outcomes[i][1]) for i in (1, 3)] == ["item 1 is unreadable", "item 3 is unreadable"]
    assert all(isinstance(outcomes[i][1], ValueError) for i in (1, 3))


def test_closing_early_waits_for_the_load_in_progress_and_starts_no_other():
    started, finished = [], []
    second_started, release = threading.Event(), threading.Event()

    def load(item: int) -> int:
        started.append(item)
        if item == 1:
            second_started.set()
            release.wait(WAIT)
        finished.append(item)
        return item

    loads = prefetched(range(5), load)
    assert next(loads) == (0, 0)
    assert second_started.wait(WAIT)
    threading.Timer(0.05, release.set).start()  # item 1 is still loading when the generator is closed
    loads.close()
    assert started == [0, 1] and finished == [0, 1], "item 1's load is waited for; item 2's never starts"
    assert not _prefetch_threads()


def test_an_error_of_the_caller_stops_the_loading_through_closing():
    started = []

    def load(item: int) -> int:
        started.append(item)
        return item

    with pytest.raises(KeyError), closing(prefetched(range(5), load)) as loads:
        for item, _ in loads:
            if item == 1:
                raise KeyError(item)
    assert started in ([0, 1], [0, 1, 2]) and not _prefetch_threads()
