"""Methods written once for both clients: a resource's method is a plan (plan.py), and the
decorators below run it on whichever transport the resource belongs to.

    class Route(Resource[R]):
        @operation
        def delete(self) -> Plan[None]:
            yield from request("DELETE", self.path, ok=(204,))

``route.delete()`` then returns None on a ``Route[SyncTransport]`` (a ``Client``'s) and a
coroutine on a ``Route[AsyncTransport]`` (an ``AsyncClient``'s): the overloads of
``__get__`` tell type checkers which, from the resource's type parameter. ``@contextual``
does the same for changes held for a ``with`` (or ``async with``) block: its plan returns
``Applied(value, undo)``, and the undo plan runs when the block ends, exception or not.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from restcp.client.plan import Applied, Plan
from restcp.client.transport import AsyncTransport, SyncTransport

P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R", bound=SyncTransport | AsyncTransport)
S = TypeVar("S", bound="Resource[Any]")


class Resource(Generic[R]):
    """Something of the API a client reaches: runs its plans on ``transport``."""

    def __init__(self, transport: R) -> None:
        self._transport: R = transport


class operation(Generic[S, P, T]):
    """A method whose body is a plan: called, it runs the plan on the resource's transport."""

    def __init__(self, plan: Callable[Concatenate[S, P], Plan[T]]) -> None:
        self.plan = plan
        self.__doc__ = plan.__doc__

    @overload
    def __get__(self, resource: None, owner: type[Any]) -> operation[S, P, T]: ...
    @overload
    def __get__(self, resource: Resource[SyncTransport], owner: type[Any]) -> Callable[P, T]: ...
    @overload
    def __get__(
        self, resource: Resource[AsyncTransport], owner: type[Any]
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...
    def __get__(self, resource: Any, owner: type[Any]) -> Any:
        if resource is None:
            return self

        @functools.wraps(self.plan)
        def run(*args: Any, **kwargs: Any) -> Any:
            return resource._transport.run(self.plan(resource, *args, **kwargs))

        return run


class contextual(Generic[S, P, T]):
    """A method whose plan makes a change and returns ``Applied(value, undo)``: called, it
    gives a context manager (async with an AsyncClient) that makes the change on entry,
    hands ``value`` to the block and undoes the change on exit, exception or not."""

    def __init__(self, plan: Callable[Concatenate[S, P], Plan[Applied[T]]]) -> None:
        self.plan = plan
        self.__doc__ = plan.__doc__

    @overload
    def __get__(self, resource: None, owner: type[Any]) -> contextual[S, P, T]: ...
    @overload
    def __get__(
        self, resource: Resource[SyncTransport], owner: type[Any]
    ) -> Callable[P, AbstractContextManager[T]]: ...
    @overload
    def __get__(
        self, resource: Resource[AsyncTransport], owner: type[Any]
    ) -> Callable[P, AbstractAsyncContextManager[T]]: ...
    def __get__(self, resource: Any, owner: type[Any]) -> Any:
        if resource is None:
            return self

        @functools.wraps(self.plan)
        def hold(*args: Any, **kwargs: Any) -> Any:
            return resource._transport.hold(self.plan(resource, *args, **kwargs))

        return hold
