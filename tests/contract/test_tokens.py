"""The token half of the Store contract (store/base.py), run against every implementation:
tokens kept by hash, ids per app never reused, revocation seen at once, refusals that change
nothing, and tokens that live apart from apps and routes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest

from restcp.errors import Conflict, NotFound
from restcp.model import RouteSettings
from restcp.store import AppInfo, TokenInfo
from tests.contract.conftest import SyncStore

IP = "127.0.0.1"
T0 = 1764181343.123456


def digest(n: int | str) -> str:
    return hashlib.sha256(f"token-{n}".encode()).hexdigest()


def tokens(store: SyncStore, *apps: str) -> Any:
    """Everything the store says of tokens: each app's list and who each known hash is."""
    return (
        {app: store.list_tokens(app) for app in apps},
        {n: store.find_token(digest(n)) for n in range(10)},
    )


def test_ids_count_from_one_per_app_and_are_never_reused(store: SyncStore) -> None:
    assert [store.create_token("a", digest(n), T0).id for n in range(3)] == [1, 2, 3]
    assert store.create_token("b", digest(3), T0).id == 1
    store.delete_token("a", 3)
    store.delete_token("a", 1)
    assert store.create_token("a", digest(4), T0).id == 4
    store.delete_token("a", 2)
    store.delete_token("a", 4)
    assert store.list_tokens("a") == []
    assert store.create_token("a", digest(5), T0 + 1).id == 5
    assert store.list_tokens("a") == [TokenInfo("a", 5, T0 + 1)]


def test_find_by_hash_and_list_by_app(store: SyncStore) -> None:
    assert store.find_token(digest(0)) is None
    assert store.list_tokens("a") == []
    first = store.create_token("a", digest(0), T0)
    second = store.create_token("a", digest(1), T0 + 0.5)
    other = store.create_token("b", digest(2), T0 + 1)
    assert first == TokenInfo("a", 1, T0)
    assert store.find_token(digest(0)) == first
    assert store.find_token(digest(1)) == second
    assert store.find_token(digest(2)) == other
    assert store.list_tokens("a") == [first, second]
    assert store.list_tokens("b") == [other]
    # Near misses of a stored hash find nothing: the lookup is exact.
    for near in (digest(0).upper(), digest(0)[:-1], digest(0) + "0", "", " " + digest(0)):
        assert store.find_token(near) is None


def test_delete_revokes_at_once_and_only_that_token(store: SyncStore) -> None:
    store.create_token("a", digest(0), T0)
    store.create_token("a", digest(1), T0)
    store.create_token("b", digest(2), T0)
    store.delete_token("a", 1)
    assert store.find_token(digest(0)) is None
    assert store.find_token(digest(1)) == TokenInfo("a", 2, T0)
    assert store.find_token(digest(2)) == TokenInfo("b", 1, T0)
    # The hash is free again: the same token could be stored anew, under a new id.
    assert store.create_token("a", digest(0), T0).id == 3


def test_tokens_do_not_make_an_app_and_outlive_its_routes(store: SyncStore) -> None:
    store.create_token("a", digest(0), T0)
    assert store.list_apps() == []
    with pytest.raises(NotFound):
        store.list_routes("a")
    store.create_route("a", IP, 10000, RouteSettings())
    store.delete_route("a", 1)
    assert store.list_apps() == [AppInfo("a", 0)]
    assert store.find_token(digest(0)) == TokenInfo("a", 1, T0)


def test_odd_app_ids_keep_their_tokens_apart(store: SyncStore) -> None:
    apps = ["a", "a:1", "a:tokens", "x%3Ay", "ünï code", ""]
    for n, app in enumerate(apps):
        store.create_token(app, digest(n), T0 + n)
    for n, app in enumerate(apps):
        assert store.find_token(digest(n)) == TokenInfo(app, 1, T0 + n)
        assert store.list_tokens(app) == [TokenInfo(app, 1, T0 + n)]


def _populated(store: SyncStore) -> None:
    store.create_token("a", digest(0), T0)
    store.create_token("a", digest(1), T0)
    store.create_token("b", digest(2), T0)
    store.delete_token("a", 2)


REFUSED: list[tuple[str, Callable[[SyncStore], Any], type[Exception]]] = [
    ("same hash, same app", lambda s: s.create_token("a", digest(0), T0), Conflict),
    ("same hash, other app", lambda s: s.create_token("c", digest(2), T0), Conflict),
    ("delete unknown id", lambda s: s.delete_token("a", 9), NotFound),
    ("delete deleted id", lambda s: s.delete_token("a", 2), NotFound),
    ("delete another app's id", lambda s: s.delete_token("b", 3), NotFound),
    ("delete of unknown app", lambda s: s.delete_token("zz", 1), NotFound),
]


@pytest.mark.parametrize(
    ("call", "error"), [(c, e) for _, c, e in REFUSED], ids=[n for n, _, _ in REFUSED]
)
def test_a_refused_call_changes_nothing(
    store: SyncStore, call: Callable[[SyncStore], Any], error: type[Exception]
) -> None:
    _populated(store)
    before = tokens(store, "a", "b", "c", "zz")
    with pytest.raises(error):
        call(store)
    assert tokens(store, "a", "b", "c", "zz") == before
    # The counters did not move either.
    assert store.create_token("a", digest(5), T0).id == 3
    assert store.create_token("c", digest(6), T0).id == 1


def test_concurrent_creates_get_distinct_ids(store: SyncStore) -> None:
    created = store.gather(*(store.aio.create_token("ab"[n % 2], digest(n), T0) for n in range(40)))
    assert sorted(t.id for t in created if t.app == "a") == list(range(1, 21))
    assert sorted(t.id for t in created if t.app == "b") == list(range(1, 21))


def test_concurrent_creates_of_one_hash_let_exactly_one_win(store: SyncStore) -> None:
    async def outcome(app: str) -> TokenInfo | Conflict:
        try:
            return await store.aio.create_token(app, digest(0), T0)
        except Conflict as err:
            return err

    results = store.gather(*(outcome(f"app{n}") for n in range(10)))
    winners = [r for r in results if isinstance(r, TokenInfo)]
    assert len(winners) == 1
    assert all(isinstance(r, Conflict) for r in results if r not in winners)
    assert store.find_token(digest(0)) == winners[0]


def test_tokens_survive_reopening(durable_url: str, open_url: Callable[[str], SyncStore]) -> None:
    first = open_url(durable_url)
    _populated(first)
    before = tokens(first, "a", "b")
    first.close()
    second = open_url(durable_url)
    assert tokens(second, "a", "b") == before
    # The counter came along: a revoked id is not handed out again after a restart.
    assert second.create_token("a", digest(7), T0).id == 3
