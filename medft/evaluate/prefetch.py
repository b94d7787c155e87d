"""Load the next case in a background thread while the current one is predicted."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Loaded = TypeVar("Loaded")
THREAD_NAME = "medft-prefetch"
_END = object()  # no item left


def prefetched(items: Iterable[Item], load: Callable[[Item], Loaded]) -> Iterator[tuple[Item, Loaded | Exception]]:
    """``(item, load(item))`` for each of ``items``, in order; ``(item, exception)`` when that load raised one.

    The load of the next item runs in one background thread while the caller works on the current one: one item
    ahead at most, so two loaded items at most are alive. Closing the generator (``contextlib.closing``) cancels
    the next load if it has not started and waits for it if it has."""
    items = iter(items)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME)
    try:
        ahead = _submit(pool, items, load)
        while ahead is not None:
            item, future = ahead
            outcome = _outcome(future)
            ahead = _submit(pool, items, load)
            yield item, outcome
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _submit(pool: ThreadPoolExecutor, items: Iterator[Item], load: Callable[[Item], Loaded]) -> tuple[Item, Future] | None:
    """The next item with its load started, or None when there is none."""
    item = next(items, _END)
    return None if item is _END else (item, pool.submit(load, item))


def _outcome(future: Future[Loaded]) -> Loaded | Exception:
    """What the load returned, or the exception it raised (a BaseException such as KeyboardInterrupt is raised)."""
    try:
        return future.result()
    except Exception as exc:  # the caller decides what a failed load means, in the order of the items
        return exc

