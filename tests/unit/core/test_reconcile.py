from __future__ import annotations

from collections.abc import Mapping

from hypothesis import given
from hypothesis import strategies as st

from restcp.core.reconcile import Action, Start, Stop, Update, diff
from restcp.model import Backend, Route, RouteKey, RouteSettings


def route(
    app: str = "a",
    id: int = 1,
    port: int = 10000,
    ip: str = "127.0.0.1",
    backends: tuple[Backend, ...] = (),
    **settings: object,
) -> Route:
    return Route(app, id, ip, port, RouteSettings().replace(**settings), backends)


def by_key(*routes: Route) -> dict[RouteKey, Route]:
    return {r.key: r for r in routes}


def test_new_route_starts() -> None:
    r = route()
    assert diff(by_key(r), {}) == [Start(r)]


def test_gone_route_stops() -> None:
    assert diff({}, by_key(route())) == [Stop(("a", 1))]


def test_changed_backends_or_settings_update() -> None:
    old = route()
    with_backend = route(backends=(Backend(1, "127.0.0.1", 9000),))
    with_balance = route(balance="round_robin")
    assert diff(by_key(with_backend), by_key(old)) == [Update(with_backend)]
    assert diff(by_key(with_balance), by_key(old)) == [Update(with_balance)]


def test_address_change_is_stop_then_start() -> None:
    old = route(port=10000)
    moved = route(port=10001)
    assert diff(by_key(moved), by_key(old)) == [Stop(old.key), Start(moved)]
    on_v6 = route(ip="::1")
    assert diff(by_key(on_v6), by_key(old)) == [Stop(old.key), Start(on_v6)]


def test_equal_states_need_nothing() -> None:
    state = by_key(route(), route(id=2, port=10001), route(app="b", port=10002, idle_timeout=0.0))
    assert diff(state, dict(state)) == []
    assert diff({}, {}) == []


def test_every_stop_comes_before_any_start() -> None:
    # Two routes swapped ports: starting either before both are stopped would find its
    # port still bound.
    running = by_key(route(id=1, port=10000), route(id=2, port=10001))
    desired = by_key(route(id=1, port=10001), route(id=2, port=10000))
    actions = diff(desired, running)
    assert sorted(map(repr, actions)) == sorted(
        map(repr, [Stop(("a", 1)), Stop(("a", 2)), Start(desired["a", 1]), Start(desired["a", 2])])
    )
    assert [type(a) for a in actions] == [Stop, Stop, Start, Start]


# -- property: diff's actions, applied in order, turn running into desired ----------------

KEYS = st.tuples(st.sampled_from(["a", "b"]), st.integers(1, 4))
ADDRESSES = st.tuples(st.sampled_from(["127.0.0.1", "::1"]), st.integers(10000, 10003))
BACKENDS = st.lists(
    st.builds(Backend, st.integers(1, 3), st.just("127.0.0.1"), st.integers(9000, 9001)),
    max_size=2,
    unique_by=lambda b: b.id,
).map(tuple)
SETTINGS = st.builds(
    RouteSettings,
    balance=st.sampled_from(["random", "round_robin"]),
    idle_timeout=st.sampled_from([0.0, 60.0]),
)


@st.composite
def states(draw: st.DrawFn) -> dict[RouteKey, Route]:
    """Routes as a store holds them: no two share an address."""
    keys = draw(st.lists(KEYS, unique=True, max_size=6))
    addresses = draw(st.lists(ADDRESSES, unique=True, min_size=len(keys), max_size=len(keys)))
    return {
        (app, id): Route(app, id, ip, port, draw(SETTINGS), draw(BACKENDS))
        for (app, id), (ip, port) in zip(keys, addresses, strict=True)
    }


def apply(actions: list[Action], running: Mapping[RouteKey, Route]) -> dict[RouteKey, Route]:
    """What the proxy manager does, checking each action makes sense where it comes."""
    serving = dict(running)
    for action in actions:
        bound = {(r.frontend_ip, r.port) for r in serving.values()}
        match action:
            case Stop(key):
                assert key in serving, f"stop of a route not served: {action}"
                del serving[key]
            case Update(r):
                assert r.key in serving, f"update of a route not served: {action}"
                old = serving[r.key]
                assert (old.frontend_ip, old.port) == (r.frontend_ip, r.port)
                assert old != r, f"update that changes nothing: {action}"
                serving[r.key] = r
            case Start(r):
                assert r.key not in serving, f"start of a route served already: {action}"
                assert (r.frontend_ip, r.port) not in bound, f"start on a bound address: {action}"
                serving[r.key] = r
    return serving


@given(desired=states(), running=states())
def test_applying_the_diff_reaches_desired_and_then_nothing_is_left(desired, running) -> None:
    result = apply(diff(desired, running), running)
    assert result == desired
    assert diff(desired, result) == []


@given(state=states())
def test_diff_of_a_state_with_itself_is_empty(state) -> None:
    assert diff(state, dict(state)) == []
