"""The control plane of a node: what it serves, and every change to it.

- ``routes.py``: the route service, the only writer of routes and backends, used by the
  API, the cluster and the node alike; it applies every change to the data plane, the
  probes, the workers and the known routes.
- ``placement.py``: which frontend IPs this node serves, and where a change must go: this
  node alone (an embedded store) or the cluster (a shared one).
- ``known.py``: the routes the node serves as last read, and the cluster's snapshot file.
- ``probes.py``: the active health checks of the routes served.
- ``backends.py``: the address policy's check of a backend before it is stored.
- ``stats.py``: the node's counters, its workers' summed in; ``readiness.py``: /healthz.

``node.py`` builds these and runs them (start, stop, reload).
"""
