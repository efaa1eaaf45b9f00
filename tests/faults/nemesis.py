"""The faults of a run, chosen by the seed: every few tenths of a second to a few seconds,
one of these, in rounds of ten (each kind as often as its weight, in a shuffled order)::

    kill_node     kill -9 a node, start it again (under its name) after a random delay
    pause_node    SIGSTOP a node for up to 3 s (past --provision-timeout: writes get 202)
    kill_redis    kill -9 redis-server, start it again on its port (its AOF has everything)
    kill_pubsub   CLIENT KILL TYPE pubsub: every node's subscription is cut at once

One node, chosen by the seed, is never killed nor paused: the clients of its routes must
never fail, whatever happens to Redis and pub/sub. Each fault is a ``fault`` event with the
interval it lasted; a node's interval runs until it is ready again.
"""

from __future__ import annotations

import random
import threading

from tests.faults.cluster import IPS, FaultCluster, NodeSlot
from tests.faults.history import History

FAULTS = {"kill_node": 3, "pause_node": 2, "kill_redis": 2, "kill_pubsub": 3}


class Nemesis:
    def __init__(self, cluster: FaultCluster, history: History, seed: int) -> None:
        self.cluster = cluster
        self.history = history
        self.rng = random.Random(f"{seed}-nemesis")
        self.spared = self.rng.randrange(len(IPS))
        self.counts: dict[str, int] = dict.fromkeys(FAULTS, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._error: BaseException | None = None

    def start(self) -> None:
        self.history.add("spared", node=self.spared)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)
        assert not self._thread.is_alive(), "the nemesis did not stop"
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        plan: list[str] = []
        try:
            while not self._stop.wait(self.rng.uniform(0.3, 3.0)):
                if not plan:
                    # Every kind of fault in each round, as often as its weight, in a new
                    # order: a short run meets them all.
                    plan = [f for f, weight in FAULTS.items() for _ in range(weight)]
                    self.rng.shuffle(plan)
                fault = plan.pop()
                self.counts[fault] += 1
                getattr(self, fault)()
        except BaseException as err:  # reported by stop(), in the test's thread
            self._error = err

    def _victim(self) -> NodeSlot:
        return self.rng.choice([s for s in self.cluster.slots if s.index != self.spared])

    def kill_node(self) -> None:
        slot = self._victim()
        delay = self.rng.uniform(0.0, 2.0)
        start = self.history.now()
        self.cluster.kill_node(slot)
        self._stop.wait(delay)
        self.cluster.start_node(slot)
        self.history.add(
            "fault", fault="kill_node", node=slot.index, start=start, end=self.history.now()
        )

    def pause_node(self) -> None:
        slot = self._victim()
        start = self.history.now()
        self.cluster.pause(slot)
        self._stop.wait(self.rng.uniform(0.2, 3.0))
        self.cluster.resume(slot)
        self.cluster.wait_serving(slot)
        self.history.add(
            "fault", fault="pause_node", node=slot.index, start=start, end=self.history.now()
        )

    def kill_redis(self) -> None:
        start = self.history.now()
        self.cluster.kill_redis()
        self._stop.wait(self.rng.uniform(0.0, 1.5))
        self.cluster.start_redis()
        self.history.add("fault", fault="kill_redis", start=start, end=self.history.now())

    def kill_pubsub(self) -> None:
        start = self.history.now()
        killed = self.cluster.kill_pubsub()
        self.history.add(
            "fault", fault="kill_pubsub", start=start, end=self.history.now(), connections=killed
        )
