"""Which partitions a shard drains next: the oldest dirty first, and a partition with more pending goes
to the back of the line (round-robin). Pure and deterministic, as workflow code must be.

A shard takes at most ``PARTITIONS_PER_BATCH`` partitions per batch. With ``d`` partitions dirty, each is
served within ``ceil(d / per_batch)`` batches of being marked, whatever its name and however many others
keep getting busier. (Taking the alphabetically first ones, as shards did before the ``fair-draining``
patch, let later names wait for as long as earlier ones stayed busy.) A partition resting after a costly
batch (``ShardWorkflow._rest``, at most ``MAX_REST``) is passed over and keeps its place, so it is served
at the first batch after its rest.
"""

from collections.abc import Container, Iterable, Iterator


class DirtyQueue:
    """Dirty partitions in the order they became dirty."""

    def __init__(self, partitions: Iterable[str] = ()) -> None:
        self._order: dict[str, None] = dict.fromkeys(partitions)

    def mark(self, partitions: Iterable[str]) -> None:
        """New events in ``partitions``: a partition already waiting keeps its place."""
        for partition in partitions:
            self._order.setdefault(partition, None)

    def take(self, limit: int, *, fair: bool = True, resting: Container[str] = ()) -> list[str]:
        """Remove and return the next ``limit`` partitions: the oldest (``fair``) or, as recorded
        histories from before oldest-first draining replay, the alphabetically first. Partitions
        ``resting`` are passed over and keep their place."""
        if fair:
            taken: list[str] = []
            for partition in self._order:
                if len(taken) == limit:
                    break
                if partition not in resting:
                    taken.append(partition)
        else:
            taken = sorted(self._order)[:limit]
        for partition in taken:
            del self._order[partition]
        return taken

    def requeue(self, partitions: Iterable[str]) -> None:
        """Partitions drained with more still pending: back of the line (unless marked again meanwhile,
        which already put them there)."""
        self.mark(partitions)

    def any_but(self, resting: Container[str]) -> bool:
        """Whether a partition not ``resting`` waits."""
        return any(partition not in resting for partition in self._order)

    def listed(self, *, fair: bool = True) -> list[str]:
        """Everything waiting, in serving order (sorted for the pre-patch histories)."""
        return list(self._order) if fair else sorted(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def __bool__(self) -> bool:
        return bool(self._order)

    def __iter__(self) -> Iterator[str]:
        return iter(self._order)
