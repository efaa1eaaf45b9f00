"""A randomized, seeded fault test of a restcp cluster (Jepsen-style, bounded).

Three ``restcp serve`` nodes, one per frontend IP (127.0.0.1, 127.0.0.2, 127.0.0.3), on one
real ``redis-server`` with an fsynced AOF. Workers write routes and backends through random
nodes and, after each 2xx, connect to the route at once (read-your-writes); clients connect
to a few routes nobody changes all along; a nemesis kills (-9) and restarts nodes, pauses
them, kills and restarts Redis, and drops the pub/sub connections. Everything is recorded in
one history; after the faults heal, the checker reads the final state through every node
and the data plane and judges the history (checker.py lists the properties).

    history.py   the record: events as JSON-able dicts, written as JSON lines on failure
    model.py     what a route may be after the writes recorded, outcomes uncertain included
    cluster.py   the processes: Redis (AOF) and the three nodes, killed and restarted
    workload.py  the writers, the read-your-writes checks, the steady clients
    nemesis.py   the faults, from the seed
    checker.py   the properties, over a history alone
    run.py       one run: setup, workload and nemesis, heal, final reads, check

One run in the suite: tests/cluster/test_faults.py. A long run (docs/cluster.md):

    uv run --frozen python -m tests.faults.run --duration 600 [--seed N]
"""
