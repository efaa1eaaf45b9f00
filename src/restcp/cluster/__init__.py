"""Several nodes on one Redis: who serves which frontend IP, and how a change made through
any node's API reaches the node that serves it.

How it works (docs/cluster.md has the channels, messages and timings)::

    client ─► API of node A ─► store write ─► Redis ◄──── resync (start, reconnect, timer) ─┐
                   │                            │                                          │
                   └─ PUBLISH provision:<ip> ──►└─ to the subscriber of provision:<ip> ─► node C

The parts, each in its module, from the top (lint-imports checks this order)::

    facade.py        Cluster: what the node asks (control/placement.py); starts, orders, stops
    subscriber.py    the carrier of notices: announce a change, listen, batch, dispatch
    provisioning.py  a route bound by the holder of its IP: ask, answer, store
    registry.py      each node's entry for GET /nodes
    epoch.py         which data the node follows; reseed and adopt
    leases.py        which IPs the node holds; the node id a lease names
    health.py        the health writer: backends up and down, into Redis
    messages.py      what nodes say to each other: typed values, one codec each
    controller.py    what the cluster needs from its node (control/routes.py)
    coordination.py  what the cluster needs from a shared store (store/redis)

Only the store talks to Redis: this package uses the ``Coordination`` a shared store offers,
and drives its node through ``Controller``.
"""

from __future__ import annotations

from restcp.cluster.controller import Controller
from restcp.cluster.coordination import Coordination, SharedStore, Subscription
from restcp.cluster.facade import Cluster

__all__ = ["Cluster", "Controller", "Coordination", "SharedStore", "Subscription"]
