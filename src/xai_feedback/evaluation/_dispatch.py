"""Run tasks in this process or on any ``concurrent.futures.Executor``, a bounded window ahead."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from typing import Any, Generic, TypeVar

from xai_feedback.evaluation._retrain import failure_record

__all__ = ["dispatch"]

T = TypeVar("T")
Record = dict[str, Any]


class _Window(Generic[T]):
    """At most ``size`` submitted tasks: payloads are built shortly before a worker needs them.

    A task whose submission fails (a broken pool after a worker died) or whose future raises
    is finished with a failed record, so the sweep goes on and a resume retries it.
    """

    def __init__(
        self,
        executor: Executor,
        tasks: Iterable[T],
        make: Callable[[T], Callable[[], Record]],
        finish: Callable[[T, Record], None],
    ) -> None:
        self.executor = executor
        self.queue: Iterator[T] = iter(tasks)
        self.make = make
        self.finish = finish
        self.futures: dict[Future[Record], T] = {}

    def submit(self) -> None:
        task = next(self.queue, None)
        if task is None:
            return
        try:
            self.futures[self.executor.submit(self.make(task))] = task
        except Exception as error:  # a broken executor: record it, keep going
            self.finish(task, failure_record(error))
            self.submit()

    def collect(self, future: Future[Record]) -> None:
        task = self.futures.pop(future)
        try:
            record = future.result()
        except Exception as error:  # the executor failed (a dead worker...)
            record = failure_record(error)
        self.finish(task, record)
        self.submit()

    def run(self, size: int) -> None:
        for _ in range(size):
            self.submit()
        try:
            while self.futures:
                done, _ = wait(self.futures, return_when=FIRST_COMPLETED)
                for future in done:
                    self.collect(future)
        finally:
            for future in self.futures:
                future.cancel()


def dispatch(
    tasks: list[T],
    make: Callable[[T], Callable[[], Record]],
    finish: Callable[[T, Record], None],
    executor: Executor | None,
    window: int,
) -> None:
    """Run ``make(task)()`` for every task and hand each record to ``finish`` as it comes."""
    if executor is None:
        for task in tasks:
            finish(task, make(task)())
        return
    _Window(executor, tasks, make, finish).run(window)
