"""Active health checks of the routes a node serves, wired to their runtimes.

Only the node's process probes (``--workers``: the results are forwarded to every worker).
A probe result goes to the route's runtime (its health), to the latency histogram, and to
the workers; a health transition is told to ``on_health`` (the cluster writes it to Redis
for the other nodes' APIs).
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from restcp.dataplane import DataPlane
from restcp.health.checker import RouteChecks
from restcp.metrics import Metrics
from restcp.model import RouteKey
from restcp.proxy.runtime import RouteRuntime
from restcp.workers import Workers


class _Sink:
    """Where one route's probe results go: its runtime, the histogram, the workers."""

    def __init__(self, runtime: RouteRuntime, metrics: Metrics, workers: Workers) -> None:
        self.runtime = runtime
        self._metrics = metrics
        self._workers = workers

    def check_result(self, backend_id: int, ok: bool, reason: str, latency: float) -> None:
        self._metrics.observe_check(self.runtime.app, self.runtime.route_id, backend_id, latency)
        self.runtime.check_result(backend_id, ok, reason, latency)
        key = (self.runtime.app, self.runtime.route_id)
        self._workers.check_result(key, backend_id, ok, reason, latency)


class Probes:
    """The health checks of every route the data plane serves: exactly its enabled and
    draining backends that the address policy allows, with the route's check."""

    def __init__(self, plane: DataPlane, metrics: Metrics, workers: Workers) -> None:
        self._plane = plane
        self._metrics = metrics
        self._workers = workers
        self._checks: dict[RouteKey, tuple[_Sink, RouteChecks]] = {}
        # Told a route's key after each health transition of one of its backends.
        self.on_health: Callable[[RouteKey], None] = lambda key: None

    async def sync(self, only: Collection[RouteKey] | None = None) -> None:
        """Probe what the served routes need now (of the routes ``only``, after a change to
        them: a change costs its routes' work, not the whole node's)."""
        running = self._plane.running()
        keys = list(self._checks) if only is None else list(only)
        for key in [k for k in keys if k not in running and k in self._checks]:
            await self._checks.pop(key)[1].close()
            self._metrics.forget_route(*key)
        # A copy: checks are closed (awaited) on the way, and the view must not change under
        # the loop.
        targets = dict(running) if only is None else {k: running[k] for k in keys if k in running}
        for key, route in targets.items():
            runtime = self._plane.runtime(key)
            entry = self._checks.get(key)
            if entry is not None and entry[0].runtime is not runtime:
                # The listener was restarted (its address changed): a new runtime to feed.
                await self._checks.pop(key)[1].close()
                entry = None
            if entry is None and runtime is not None:
                sink = _Sink(runtime, self._metrics, self._workers)
                entry = self._checks[key] = (sink, RouteChecks(sink, runtime.resolve))
                runtime.on_health = self._health_changed
            if entry is not None:
                probed = [
                    b
                    for b in route.backends
                    if b.state != "disabled" and self._plane.refusal(b.ip, b.port) is None
                ]
                tls = runtime.origination if runtime is not None else None
                entry[1].update(route.settings.health_check, probed, tls)

    def _health_changed(self, key: RouteKey) -> None:
        self.on_health(key)

    async def close(self) -> None:
        for _, checks in self._checks.values():
            await checks.close()
        self._checks.clear()
