"""A route's toxics against a model of them, through the HTTP API of a real node: Hypothesis
runs sequences of adds, PATCHes, gets and removals (valid and not), and after each step the
route's toxics, listed, read one by one and read with the route, are the model's, in order.

The model is written from docs/toxics.md: names, the defaults and ranges of each type's
attributes (the table that tests/unit/test_docs.py keeps equal to core.toxics.SPECS), what
a PATCH merges and replaces, and which status each request earns: 422 naming one of the
fields that are wrong, else 409 for a name taken or the route's quota reached, else the
change, which nothing refused may make."""

from __future__ import annotations

import http.client
import ipaddress
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from restcp.core.toxics import SPECS
from tests.e2e.conftest import assert_clean_log, create_route, serve_args
from tests.helpers import Node, Response, free_port_range

MAX_TOXICS = 3
APP = "machine"
NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
ATTRIBUTE_NAMES = sorted({key for spec in SPECS.values() for key in spec})


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` about eight times in nine, so that most requests are right, and most wrong
    ones wrong in one field. (``one_of`` would pick ``bad`` once in three.)"""
    return st.integers(0, 8).flatmap(lambda i: bad if i == 8 else good)


# Names in a path: never a dot segment, which URL resolution would take away.
names = mostly(st.sampled_from(["a", "b", "slow", "x.y-1"]), st.sampled_from(["a b", "é"]))
new_names = mostly(names, st.sampled_from(["..", ".", "", "n" * 65]))
types = mostly(st.sampled_from(list(SPECS)), st.just("lag"))
streams = mostly(st.sampled_from(["upstream", "downstream"]), st.just("sideways"))
toxicities = mostly(st.floats(0, 1), st.sampled_from([-0.5, 1.5]))
# Small values, where slicer sizes meet, and every range's ends.
numbers = mostly(
    st.integers(1, 300),
    st.sampled_from([-1, 0, 3_600_000, 3_600_001, 10_000_000, 10_000_001, 1 << 24, 86_400_001]),
)
client_lists = st.lists(
    mostly(st.sampled_from(["10.0.0.0/8", "10.1.2.3", "192.168.7.1/16", "::1"]), st.just("x")),
    max_size=2,
)


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


def attribute_sets(type_: str) -> st.SearchStrategy[dict[str, int]]:
    """Some of the attributes of ``type_``; sometimes another type's too."""
    own = st.fixed_dictionaries(
        {},
        optional=dict.fromkeys(SPECS.get(type_, {}), numbers),  # type: ignore[call-overload]
    )
    other = st.dictionaries(st.sampled_from(ATTRIBUTE_NAMES), numbers, min_size=1, max_size=1)
    return mostly(own, st.builds(lambda a, b: {**a, **b}, own, other))


def canonical_network(text: str) -> str | None:
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        return None


class Api:
    """One kept-alive connection to a node's API: a machine makes thousands of calls, and
    shrinking a failure as many again."""

    def __init__(self, node: Node) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", node.api_port, timeout=10)

    def call(self, method: str, path: str, body: Any = None) -> Response:
        data = None if body is None else json.dumps(body).encode()
        headers = {} if data is None else {"Content-Type": "application/json"}
        self.connection.request(method, path, body=data, headers=headers)
        with self.connection.getresponse() as response:
            return Response(response.status, dict(response.headers), response.read())

    def close(self) -> None:
        self.connection.close()


class ToxicsMachine(RuleBasedStateMachine):
    """One route of a running node, and the toxics it should have, by name, in order."""

    node: Node

    def __init__(self) -> None:
        super().__init__()
        self.api = Api(self.node)
        route = create_route(self.node, APP)
        self.path = f"/apps/{APP}/routes/{route['id']}"
        self.model: dict[str, dict[str, Any]] = {}

    def teardown(self) -> None:
        assert self.api.call("DELETE", self.path).status == 204
        self.api.close()

    def toxic_path(self, name: str) -> str:
        return f"{self.path}/toxics/{quote(name, safe='')}"

    @rule(
        method=st.sampled_from(["PUT", "POST"]),
        name=optional(new_names),
        type_=types,
        stream=optional(streams),
        toxicity=optional(toxicities),
        clients=optional(client_lists),
        data=st.data(),
    )
    def add(
        self,
        method: str,
        name: str | None,
        type_: str,
        stream: str | None,
        toxicity: float | None,
        clients: list[str] | None,
        data: st.DataObject,
    ) -> None:
        attributes = data.draw(optional(attribute_sets(type_)), label="attributes")
        body: dict[str, Any] = {"type": type_}
        given = {
            "name": name,
            "stream": stream,
            "toxicity": toxicity,
            "attributes": attributes,
            "clients": clients,
        }
        body.update({k: v for k, v in given.items() if v is not None})
        response = self.api.call(method, f"{self.path}/toxics", body)

        stream = "downstream" if stream is None else stream
        name = f"{type_}_{stream}" if name is None else name
        wrong: set[str] = set()
        if type_ not in SPECS:
            wrong.add("type")
        if stream not in ("upstream", "downstream"):
            wrong.add("stream")
        if not (NAME.fullmatch(name) and name not in (".", "..")):
            wrong.add("name")
        if toxicity is not None and not 0 <= toxicity <= 1:
            wrong.add("toxicity")
        values = self.attributes(type_, attributes or {}, {}, wrong)
        networks = self.networks(clients or [], wrong)
        if wrong:
            self.refused(response, 422, wrong)
        elif name in self.model or len(self.model) >= MAX_TOXICS:
            self.refused(response, 409)
        else:
            expected = {
                "name": name,
                "type": type_,
                "stream": stream,
                "toxicity": 1.0 if toxicity is None else float(toxicity),
                "attributes": values,
                "clients": networks,
            }
            assert (response.status, response.json()) == (201, expected), (body, response)
            assert response.headers["Location"] == self.toxic_path(name)
            self.model[name] = expected

    def some_name(self, data: st.DataObject) -> str:
        """Mostly the name of a toxic the route has."""
        known = st.sampled_from(sorted(self.model)) if self.model else names
        name: str = data.draw(st.one_of(known, known, names), label="name")
        return name

    @rule(toxicity=optional(toxicities), clients=optional(client_lists), data=st.data())
    def patch(
        self,
        toxicity: float | None,
        clients: list[str] | None,
        data: st.DataObject,
    ) -> None:
        name = self.some_name(data)
        current = self.model.get(name)
        mine = current or {"type": "latency", "stream": "downstream"}
        # Mostly the toxic's own type and stream (a PATCH may repeat them), else a change.
        type_ = data.draw(optional(mostly(st.just(mine["type"]), types)), label="type")
        stream = data.draw(optional(mostly(st.just(mine["stream"]), streams)), label="stream")
        attributes = data.draw(optional(attribute_sets(mine["type"])), label="attributes")
        body = {
            k: v
            for k, v in {
                "type": type_,
                "stream": stream,
                "toxicity": toxicity,
                "attributes": attributes,
                "clients": clients,
            }.items()
            if v is not None
        }
        if current is None:
            # Only a body that is right in itself, to see the 404 alone.
            body = {k: v for k, v in body.items() if k in ("attributes", "clients")}
            response = self.api.call("PATCH", self.toxic_path(name), body)
            self.refused(response, 404)
            return
        response = self.api.call("PATCH", self.toxic_path(name), body)
        wrong: set[str] = set()
        for field in ("type", "stream"):
            if field in body and body[field] != current[field]:
                wrong.add(field)
        if toxicity is not None and not 0 <= toxicity <= 1:
            wrong.add("toxicity")
        expected = dict(current)
        if attributes is not None:
            expected["attributes"] = self.attributes(
                current["type"], attributes, current["attributes"], wrong
            )
        if clients is not None:
            expected["clients"] = self.networks(clients, wrong)
        if toxicity is not None:
            expected["toxicity"] = float(toxicity)
        if wrong:
            self.refused(response, 422, wrong)
        else:
            assert (response.status, response.json()) == (200, expected), (body, response)
            self.model[name] = expected

    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        name = self.some_name(data)
        response = self.api.call("DELETE", self.toxic_path(name))
        if name in self.model:
            assert response.status == 204, response
            del self.model[name]
        else:
            self.refused(response, 404)

    @invariant()
    def the_route_has_the_models_toxics(self) -> None:
        listed = self.api.call("GET", f"{self.path}/toxics")
        assert (listed.status, listed.json()) == (200, list(self.model.values()))
        assert self.api.call("GET", self.path).json()["toxics"] == list(self.model.values())
        for name, toxic in self.model.items():
            one = self.api.call("GET", self.toxic_path(name))
            assert (one.status, one.json()) == (200, toxic)

    @staticmethod
    def attributes(
        type_: str, given: dict[str, int], current: dict[str, int], wrong: set[str]
    ) -> dict[str, int]:
        """A type's attributes: ``given`` over ``current`` over the defaults; each field
        that is wrong added to ``wrong``."""
        spec = SPECS.get(type_)  # type: ignore[call-overload]
        if spec is None:
            return {}
        values: dict[str, int] = {}
        for key, value in given.items():
            if key not in spec or not spec[key].low <= value <= spec[key].high:
                wrong.add(f"attributes.{key}")
        for key, attribute in spec.items():
            value = given.get(key, current.get(key, attribute.default))
            if value is None:
                wrong.add(f"attributes.{key}")
            else:
                values[key] = value
        sizes = {"attributes.average_size", "attributes.size_variation"}
        slicer = type_ == "slicer" and not wrong & sizes
        if slicer and values["size_variation"] >= values["average_size"]:
            wrong.add("attributes.size_variation")
        return dict(sorted(values.items()))

    @staticmethod
    def networks(clients: list[str], wrong: set[str]) -> list[str]:
        networks = []
        for i, text in enumerate(clients):
            network = canonical_network(text)
            if network is None:
                wrong.add(f"clients.{i}")
            else:
                networks.append(network)
        return networks

    @staticmethod
    def refused(response: Response, status: int, wrong: set[str] | None = None) -> None:
        """A problem of ``status``; for a 422, naming some of the ``wrong`` fields only."""
        assert response.status == status, (status, wrong, response)
        assert response.headers["Content-Type"].startswith("application/problem+json")
        if wrong is not None:
            fields = {error["field"] for error in response.json()["errors"]}
            assert fields, response
            assert fields <= wrong, (fields, wrong)


@pytest.fixture(scope="module")
def machine_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    lo, hi = free_port_range(8)
    store = Path(tmp_path_factory.mktemp("toxics-machine")) / "restcp.db"
    node = Node(*serve_args(store, lo, hi, "--max-toxics-per-route", str(MAX_TOXICS)))
    try:
        node.wait_ready()
        yield node
    finally:
        node.stop()


def test_toxics_follow_the_model(machine_node: Node) -> None:
    class Machine(ToxicsMachine):
        node = machine_node

    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=100,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    assert_clean_log(machine_node)
