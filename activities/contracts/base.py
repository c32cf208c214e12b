"""One definition per activity: its name, typed input and result, timeouts and retry policy.

A workflow calls an activity by reference (``await ANALYZE_IMPACT.run(plan_input)``), so a renamed
activity or a changed input type is a type error, not a task that fails at run time; the implementation
registers under the same contract (``@ANALYZE_IMPACT.implement``), which checks that its signature
takes the contract's input and returns its result.

No ``from __future__ import annotations``: Temporal's converter calls ``typing.get_type_hints`` on every
dataclass it decodes, and string annotations would be evaluated again each time.
"""

import inspect
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, TypeVar

from temporalio import activity, workflow
from temporalio.common import RetryPolicy

In = TypeVar("In")
Out = TypeVar("Out")
F = TypeVar("F", bound=Callable[..., Any])


class PermanentProcessingError(Exception):
    """An input that can never succeed as it is (bad data, unknown rate): retrying will not help.

    Raised as the ``type`` of a non-retryable ``ApplicationError`` so workflows and the Web UI show it.
    """


@dataclass(frozen=True)
class ActivityContract(Generic[In, Out]):
    """An activity as workflows call it and workers implement it."""

    name: str
    input: type[In]
    output: type[Out]
    start_to_close: timedelta
    retry: RetryPolicy
    #: Run as a local activity (in the workflow's worker, recorded in its history without a round trip
    #: through the server's task queue) rather than a regular one.
    local: bool = False
    #: For regular activities: how long one may wait for a worker before the attempt counts as failed.
    schedule_to_start: timedelta | None = None
    #: For regular activities that heartbeat: silence this long means the worker died, and the attempt is
    #: retried then rather than at ``start_to_close``.
    heartbeat: timedelta | None = None

    async def run(self, arg: In) -> Out:
        """Call the activity from inside a workflow and wait for its typed result."""
        if self.local:
            return await workflow.execute_local_activity(
                self.name,
                arg,
                result_type=self.output,
                start_to_close_timeout=self.start_to_close,
                retry_policy=self.retry,
            )
        return await workflow.execute_activity(
            self.name,
            arg,
            result_type=self.output,
            start_to_close_timeout=self.start_to_close,
            schedule_to_start_timeout=self.schedule_to_start,
            heartbeat_timeout=self.heartbeat,
            retry_policy=self.retry,
        )

    def implement(self, fn: F) -> F:
        """Register ``fn`` (a function or method) as this activity, after checking its signature."""
        hints = typing.get_type_hints(fn)
        params = [p for p in inspect.signature(fn).parameters if p not in ("self", "return")]
        if len(params) != 1 or hints.get(params[0]) is not self.input:
            raise TypeError(f"{fn.__qualname__} must take one {self.input.__name__} to implement {self.name}")
        returns = hints.get("return")
        if typing.get_origin(returns) in (Awaitable, typing.Coroutine):
            returns = typing.get_args(returns)[-1]
        if returns is not self.output:
            raise TypeError(f"{fn.__qualname__} must return {self.output.__name__} to implement {self.name}")
        return activity.defn(name=self.name)(fn)
