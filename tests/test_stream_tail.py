"""The feed's one reader per process (``api.stream.Tail``): however many clients join at once, one task
reads the table and every client gets every row committed after it joined exactly once, in order."""

from __future__ import annotations

import asyncio
import threading

import pytest

from nftpulse.api.stream import Tail


class Table:
    """An append-only table the tail reads from a thread, as it reads the change log; counts the readers
    that are inside ``fetch`` at once."""

    def __init__(self) -> None:
        self.rows: list[int] = []
        self._lock = threading.Lock()
        self.inside = 0
        self.most_inside = 0

    def fetch(self, after: int, limit: int) -> list[int]:
        with self._lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        try:
            threading.Event().wait(0.002)  # a query takes a moment: overlapping readers would show
            return [r for r in self.rows if r > after][:limit]
        finally:
            with self._lock:
                self.inside -= 1

    def head(self) -> int:
        threading.Event().wait(0.002)  # a client joining yields to the others, as the database makes it
        return self.rows[-1] if self.rows else 0


async def _drain(queue: asyncio.Queue[int], want: int) -> list[int]:
    got: list[int] = []
    async with asyncio.timeout(10.0):
        while len(got) < want:
            got.append(await queue.get())
    await asyncio.sleep(0.3)  # anything more (a duplicate) would arrive by now
    while not queue.empty():
        got.append(queue.get_nowait())
    return got


@pytest.mark.asyncio
async def test_clients_joining_at_once_share_one_reader_and_get_each_row_once() -> None:
    table = Table()
    table.rows.extend(range(1, 11))  # history before anyone joined: not pushed
    tail: Tail[int] = Tail(table.fetch, table.head, lambda r: r, poll_s=0.01)
    try:
        subs = await asyncio.gather(*(tail.subscribe(lambda r: True) for _ in range(200)))
        assert tail.clients == 200
        table.rows.extend(range(11, 61))
        for sub in subs:
            assert await _drain(sub.queue, 50) == list(range(11, 61))
        assert table.most_inside == 1
    finally:
        await tail.close()


@pytest.mark.asyncio
async def test_a_client_joining_after_everyone_left_starts_from_now() -> None:
    table = Table()
    tail: Tail[int] = Tail(table.fetch, table.head, lambda r: r, poll_s=0.01)
    try:
        first = await tail.subscribe(lambda r: True)
        table.rows.extend([1, 2])
        assert await _drain(first.queue, 2) == [1, 2]
        tail.unsubscribe(first)
        await asyncio.sleep(0.05)
        table.rows.extend([3, 4])  # committed while nobody listened: history for the next client
        later = await tail.subscribe(lambda r: r % 2 == 1)
        table.rows.extend([5, 6, 7])
        assert await _drain(later.queue, 2) == [5, 7]
    finally:
        await tail.close()
