"""A program of requests to the caching allocator, written as a moment of the run makes
them: ``("alloc", bytes)``, or ``("free", j)`` for the program's j-th allocation.
Allocations never freed stay (gpu.trace replays programs in order)."""

from __future__ import annotations

Requests = tuple[tuple[str, int], ...]
# ("previous", 0): the loop lets the last pass's held output go here (a head program
# that holds its output into the next forward: ops.loss_requests._loop_shifted_loss)
PREVIOUS = "previous"


class RequestProgram:
    """Requests in order: ``alloc`` returns the allocation's number (-1 for an empty
    tensor, which asks the allocator for nothing), ``free`` takes numbers (-1 ignored)."""

    __slots__ = ("count", "ops")

    def __init__(self) -> None:
        self.ops: list[tuple[str, int]] = []
        self.count = 0

    def alloc(self, size: int) -> int:
        if size <= 0:
            return -1
        self.ops.append(("alloc", size))
        self.count += 1
        return self.count - 1

    def free(self, *keys: int) -> None:
        self.ops.extend(("free", k) for k in keys if k >= 0)


def never_freed(requests: Requests) -> tuple[int, ...]:
    """The numbers of the allocations ``requests`` never free, in order."""
    count = sum(1 for op, _ in requests if op == "alloc")
    freed = {k for op, k in requests if op == "free"}
    return tuple(k for k in range(count) if k not in freed)
