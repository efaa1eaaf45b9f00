"""``restcp serve --workers N``: N-1 worker processes beside the node's, serving the same
routes on the same ports, each on a socket of its own joined with SO_REUSEPORT.

How it works::

    node's process: API, store, cluster role, health probes, and its own listeners
       │   one socketpair per worker, the messages of wire.py, in order:
       │   Hello (settings) ─► Serve (every route served) ─► ServeRoute (one; None: stopped)
       │   ─► ProbeResult ─► ApiListening
       │                                        ◄─ Applied (acks of Serve/ServeRoute), Counted
       ▼
    worker k: a DataPlane of its own (dataplane.py, built as the node's); binds each route's
              port with SO_REUSEPORT next to the node's socket; Linux spreads new
              connections over the sockets

- ``supervisor.py`` is the node's side (``WorkerPool``: start, feed, restart, count, stop;
  ``NoWorkers`` when there are none), ``child.py`` the worker process, ``wire.py`` the
  messages and their codec.
- The node decides, the workers follow. A worker never reads the store: it serves exactly
  the routes the node's process serves, as it serves them. So a port the node could not
  bind (someone else holds it: 409), or a frontend IP whose lease it lost, is never served
  by a worker either, and every store (``memory://`` included) works unchanged; the store
  sees one client per node, not N.
- Level-triggered. A worker keeps the desired routes it was told and applies them with the
  node's own code (``DataPlane.apply``), after each message and again every
  ``--resync-interval``, so a port it could not bind is retried. The channel is a stream,
  so nothing is lost while a worker lives; a restarted one starts from a snapshot. The node
  sends a snapshot again only when its resync changed something.
- Acks. Each Serve/ServeRoute carries a sequence number the worker acknowledges once
  applied. The route service waits for every serving worker's ack (up to ACK_TIMEOUT)
  before a write answers, so a client connecting right after a 201 finds every listening
  socket of the port with the new backends. A worker still starting has no socket on the
  port (a socket that is not listening gets no connections from Linux), so it is not waited
  for.
- Health. Only the node's process probes; every probe result is forwarded and fed to each
  worker's runtime, so all processes see the same transitions (logged once, by the node's
  process). Passive health (real clients' failed connects) stays per process.
- Counters. Workers send the counters that changed every STATS_INTERVAL; the node adds them
  into /metrics and into ``active_connections``, keeping an exited worker's totals so that
  counters never go down.
- Lifecycle. The node restarts a worker that exits (backoff RESTART_MIN doubling to
  RESTART_MAX); on SIGTERM it signals every worker, and each drains its own connections up
  to ``--drain-timeout`` and exits 0. A worker dies with its parent (PR_SET_PDEATHSIG,
  SIGKILL: a ``kill -9`` of the node's process is one of the whole node) and stops draining
  when its channel closes.
"""

from restcp.workers.child import main
from restcp.workers.supervisor import NoWorkers, WorkerPool, Workers

__all__ = ["NoWorkers", "WorkerPool", "Workers", "main"]
