"""Pickers: which backend a new client goes to.

A picker is asked for one backend at a time, with the ids already tried for this client (and
any backend at its connection limit) excluded, so the same call serves the first pick and
every failover after a failed connect. Candidates are the route's *usable* backends (up or
unknown, enabled, weight > 0): the runtime filters them when health or settings change, not
on every client. Pickers keep only their own cursor or table; everything else is passed in,
because backends change live.

Weights are 0-256 on every algorithm: a backend of weight 2 gets twice the clients of one of
weight 1 (least_conn and two_choices compare ``active / weight``); weight 0 takes no new
clients.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Collection, Sequence
from typing import Protocol, TypeVar

from restcp.model import Balance


class Candidate(Protocol):
    @property
    def id(self) -> int: ...

    @property
    def weight(self) -> int: ...

    @property
    def active(self) -> int:
        """Open connections now: least_conn and two_choices read it."""


C = TypeVar("C", bound=Candidate)


class Picker(Protocol):
    def pick(
        self, candidates: Sequence[C], excluded: Collection[int], key: bytes = b""
    ) -> C | None:
        """One of ``candidates`` not in ``excluded`` and of weight > 0, or None.

        ``key`` identifies the client (its IP address): only source_hash reads it.
        """


def _eligible(candidates: Sequence[C], excluded: Collection[int]) -> list[C]:
    return [c for c in candidates if c.weight > 0 and c.id not in excluded]


class RandomPicker:
    """Weighted uniform choice; the original restcp chose uniformly at random."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(
        self, candidates: Sequence[C], excluded: Collection[int], key: bytes = b""
    ) -> C | None:
        left = _eligible(candidates, excluded)
        if not left:
            return None
        if len(left) == 1:
            return left[0]
        return self._rng.choices(left, weights=[c.weight for c in left])[0]


class RoundRobinPicker:
    """Interleaved weighted round-robin, in id order.

    Round r visits, in id order, every backend whose weight is above r; rounds run from 0
    to the largest weight. Weights 3,1,1 give a b c a a, and equal weights give the plain
    cycle. The cursor is (round, id last handed out), not a position in the list, so a
    backend added or removed shifts nothing: the cycle goes on from where it was.
    """

    def __init__(self) -> None:
        self._round = 0
        self._last_id = 0

    def pick(
        self, candidates: Sequence[C], excluded: Collection[int], key: bytes = b""
    ) -> C | None:
        left = _eligible(candidates, excluded)
        if not left:
            return None
        top = max(c.weight for c in left)
        if self._round >= top:
            self._round, self._last_id = 0, 0
        # Two passes at most: after a reset the heaviest backend qualifies in any round.
        while True:
            after = [c for c in left if c.id > self._last_id and c.weight > self._round]
            if after:
                chosen = min(after, key=_by_id)
                self._last_id = chosen.id
                return chosen
            self._round = (self._round + 1) % top
            self._last_id = 0


def _by_id(candidate: Candidate) -> int:
    return candidate.id


class LeastConnPicker:
    """The fewest open connections per unit of weight; ties go round-robin."""

    def __init__(self) -> None:
        self._turn = 0

    def pick(
        self, candidates: Sequence[C], excluded: Collection[int], key: bytes = b""
    ) -> C | None:
        left = _eligible(candidates, excluded)
        if not left:
            return None
        load = min(c.active / c.weight for c in left)
        tied = [c for c in left if c.active / c.weight == load]
        self._turn += 1
        return tied[self._turn % len(tied)]


class TwoChoicesPicker:
    """Power of two random choices: two weighted random picks, the less loaded one wins."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(
        self, candidates: Sequence[C], excluded: Collection[int], key: bytes = b""
    ) -> C | None:
        left = _eligible(candidates, excluded)
        if len(left) <= 1:
            return left[0] if left else None
        a, b = self._rng.choices(left, weights=[c.weight for c in left], k=2)
        return a if a.active / a.weight <= b.active / b.weight else b


def _point(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def _score(key: bytes, backend_id: int, weight: int) -> float:
    """``weight / -ln(u)`` with ``u`` uniform in (0, 1) from a hash of (id, key): of several
    backends, each is the top scorer of a share of keys equal to its share of the weight."""
    # 52 bits keep u strictly inside (0, 1) as a float, so the log is never 0.
    u = ((_point(b"%d:" % backend_id + key) >> 12) + 0.5) / (1 << 52)
    return weight / -math.log(u)


class SourceHashPicker:
    """Weighted rendezvous (highest random weight) hashing of the client address.

    Every usable backend gets a score from a hash of its id and the key; the client goes to
    the top scorer not excluded. A key's order of backends depends only on the key and each
    backend's own (id, weight), so adding a backend moves only the keys it now tops (about
    1/n of them), removing one moves only its own keys, and a failover walks on down the
    same order without moving anyone else's. Nothing is kept between picks: a hash ring of
    ``weight * 100`` points per backend had to be rebuilt whenever a backend went up or
    down, which at high weights blocked the event loop for seconds. A pick costs one hash
    per candidate.
    """

    def pick(
        self, candidates: Sequence[C], excluded: Collection[int], key: bytes = b""
    ) -> C | None:
        best: C | None = None
        best_score = 0.0
        for c in candidates:
            if c.weight <= 0 or c.id in excluded:
                continue
            score = _score(key, c.id, c.weight)
            # Ties (in practice never) go to the lower id, so list order does not matter.
            if best is None or score > best_score or (score == best_score and c.id < best.id):
                best, best_score = c, score
        return best


def make_picker(balance: Balance, rng: random.Random | None = None) -> Picker:
    if balance == "round_robin":
        return RoundRobinPicker()
    if balance == "least_conn":
        return LeastConnPicker()
    if balance == "two_choices":
        return TwoChoicesPicker(rng)
    if balance == "source_hash":
        return SourceHashPicker()
    return RandomPicker(rng)
