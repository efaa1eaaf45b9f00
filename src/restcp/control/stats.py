"""A node's statistics: its own data plane's counters plus its workers', summed.

Read when ``/metrics`` is scraped and when the API shows a backend: the relay hot path only
bumps plain integers (``DataPlane.counts`` reads them), and nothing is summed in between.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator, Mapping

from restcp.dataplane import DataPlane
from restcp.metrics import BackendSample, PortSample, RouteSample, ToxicSample
from restcp.model import BackendStatus, RouteKey
from restcp.workers import Workers


class NodeStats:
    """The counters of every process of a node, by route and backend (the metrics' source)."""

    def __init__(self, plane: DataPlane, workers: Workers) -> None:
        self._plane = plane
        self._workers = workers

    def backend_status(self, key: RouteKey) -> Mapping[int, BackendStatus]:
        """Health as the node's process sees it (it probes for all), and the connections
        open in every process."""
        status = self._plane.backend_status(key)
        counted = self._workers.counts(key)
        if not counted.backends:
            return status
        return {
            backend_id: dataclasses.replace(
                s, active_connections=s.active_connections + counted.backend(backend_id).active
            )
            for backend_id, s in status.items()
        }

    def ports(self) -> Iterator[PortSample]:
        """Every address shared by SNI that this node serves: the clients it closed before
        a route was chosen, by reason, in every process."""
        for (ip, port), closes in self._plane.sni_closes().items():
            total = Counter(closes)
            total.update(self._workers.sni_closes((ip, port)))
            yield PortSample(ip, port, dict(total))

    def samples(self) -> Iterator[RouteSample]:
        """Every served route's counters, for the metrics collector (at scrape time)."""
        for key in list(self._plane.running()):
            here = self._plane.counts(key)
            if here is None:
                continue
            total = here + self._workers.counts(key)
            status = self._plane.backend_status(key)
            app, route_id = key
            backends = []
            # The backends this process serves: a worker may briefly count one the node's
            # process no longer has.
            for backend_id in here.backends:
                counts = total.backend(backend_id)
                backends.append(
                    BackendSample(
                        app=app,
                        route=route_id,
                        backend=backend_id,
                        connections_total=counts.connections,
                        connections_active=counts.active,
                        bytes_in=counts.bytes_in,
                        bytes_out=counts.bytes_out,
                        connect_failures=counts.connect_failures,
                        health=status[backend_id].health,
                        connections_max=counts.active_max,
                    )
                )
            # Likewise, the toxics this process serves.
            toxics = tuple(
                ToxicSample(name, t.type, t.stream, t.connections, t.held, t.dropped)
                for name in here.toxics
                for t in (total.toxics[name],)
            )
            yield RouteSample(
                app,
                route_id,
                total.refused,
                tuple(backends),
                toxics,
                total.tls_failures,
                total.backend_tls_failures,
                total.connections_max,
            )
