"""The client's pure parts, without a server: how answers are read and refusals raised,
how a plan is run, and the metrics parser."""

from __future__ import annotations

import httpx
import pytest

from restcp.api.schemas import AppOut, BackendOut
from restcp.client import (
    ApiError,
    Conflict,
    Forbidden,
    Invalid,
    Metrics,
    NotFound,
    NotYetApplied,
    Unauthorized,
    Unavailable,
)
from restcp.client.errors import error_for
from restcp.client.plan import Pause, Plan, Reply, Request, request
from restcp.client.resources import Backend, Backends, Route

REQUEST = httpx.Request("PATCH", "http://restcp/apps/web/routes/1")


def response(status: int, body: object = None, **kw: object) -> httpx.Response:
    if body is None:
        return httpx.Response(status, request=REQUEST, **kw)  # type: ignore[arg-type]
    return httpx.Response(status, json=body, request=REQUEST)


def problem(status: int, detail: str, **extra: object) -> httpx.Response:
    return response(status, {"type": "about:blank", "title": "T", "status": status,
                             "detail": detail, **extra})  # fmt: skip


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, Invalid), (401, Unauthorized), (403, Forbidden), (404, NotFound), (409, Conflict),
     (413, Invalid), (422, Invalid), (503, Unavailable), (500, ApiError), (405, ApiError)],
)  # fmt: skip
def test_each_problem_status_is_its_exception(status: int, kind: type[ApiError]) -> None:
    err = error_for(problem(status, "why"))
    assert type(err) is kind
    assert (err.status, err.detail, err.title) == (status, "why", "T")
    assert str(err) == f"PATCH /apps/web/routes/1: {status} why"


def test_invalid_carries_the_field_errors_and_the_body_its_extra_members() -> None:
    errors = [{"field": "balance", "message": "bad"}, {"field": "port", "message": "worse"}]
    err = error_for(problem(422, "invalid request body", errors=errors))
    assert isinstance(err, Invalid)
    assert [(e.field, e.message) for e in err.errors] == [("balance", "bad"), ("port", "worse")]
    report = error_for(problem(409, "conflicts", written=[], conflicts=[{"route": 1}]))
    assert report.body["conflicts"] == [{"route": 1}]


def backend_out(backend_id: int, state: str = "enabled") -> dict[str, object]:
    """A backend as the API answers it (every field: read with unknown fields forbidden)."""
    return {"ip": "10.0.0.1", "port": 80, "id": backend_id, "weight": 1, "state": state,
            "drain_timeout": None, "max_connections": None, "proxy_protocol": None,
            "health": "unknown", "health_changed_at": None, "health_reason": "",
            "active_connections": 0, "replaced": []}  # fmt: skip


def answer(status: int, body: object = None) -> Reply:
    return Reply(response(status, body), "forbid")


def test_a_change_the_serving_node_has_not_applied_yet_raises_with_what_it_returns() -> None:
    # A 202 to a change is no problem document: the body a 2xx would have had, and
    # "status": "provisioning".
    route = Route(None, "web", 1)
    backends = route.backends
    steps = Backends.add.plan(backends, "10.0.0.1", 80)
    assert next(steps) == Request("PUT", "/apps/web/routes/1/backends", {"ip": "10.0.0.1",
                                                                         "port": 80})  # fmt: skip
    assert steps.send(answer(202, {"id": 3, "status": "provisioning"})) == Request(
        "GET", "/apps/web/routes/1/backends/3"
    )
    with pytest.raises(NotYetApplied) as pending:
        steps.send(answer(200, backend_out(3)))
    err = pending.value
    assert (err.status, err.body) == (202, {"id": 3, "status": "provisioning"})
    # (Every answer here is to REQUEST.)
    assert str(err) == (
        "PATCH /apps/web/routes/1: 202 stored; the node serving the route's frontend IP has "
        "not applied it yet"
    )
    # What add() returns once applied: the backend, read back.
    assert isinstance(err.result, Backend)
    assert (err.result.id, err.result.info) == (3, BackendOut.model_validate(backend_out(3)))

    # The body of the 202 is read as the 2xx's would be.
    backend = backends[3]
    steps = Backend.update.plan(backend, weight=1)
    next(steps)
    with pytest.raises(NotYetApplied) as pending:
        steps.send(answer(202, {**backend_out(3), "status": "provisioning"}))
    assert pending.value.result is backend
    assert backend.info == BackendOut.model_validate(backend_out(3))

    steps = Route.delete.plan(route)
    assert next(steps) == Request("DELETE", "/apps/web/routes/1")
    with pytest.raises(NotYetApplied) as pending:
        steps.send(answer(202, {"id": 1, "app": "web", "status": "provisioning"}))
    assert pending.value.result is None
    # Applied: the call returns.
    steps = Route.delete.plan(route)
    next(steps)
    with pytest.raises(StopIteration):
        steps.send(answer(204))


def test_a_hold_the_serving_node_has_not_applied_yet_is_undone_and_raised() -> None:
    # The block would run without the backend drained: it does not run, and nothing stays.
    backend = Route(None, "web", 1).backends[2]
    steps = Backend.drained.plan(backend)
    assert next(steps) == Request("GET", "/apps/web/routes/1/backends/2")
    drain = {"state": "drain", "drain_timeout": None}
    assert steps.send(answer(200, backend_out(2))) == Request("PATCH", backend.path, drain)
    undo = {"state": "enabled", "drain_timeout": None}
    pending = {**backend_out(2, "drain"), "status": "provisioning"}
    assert steps.send(answer(202, pending)) == Request("PATCH", backend.path, undo)
    with pytest.raises(NotYetApplied) as raised:
        # The undo is stored, not applied yet either: the block's NotYetApplied is raised.
        steps.send(answer(202, {**backend_out(2), "status": "provisioning"}))
    assert raised.value.result is backend
    assert raised.value.body == pending


def test_a_refusal_that_is_not_a_problem_document_still_says_what_came() -> None:
    err = error_for(httpx.Response(502, text="Bad Gateway from a proxy", request=REQUEST))
    assert (type(err), err.status, err.detail) == (ApiError, 502, "Bad Gateway from a proxy")
    empty = error_for(httpx.Response(503, request=REQUEST))
    assert (type(empty), empty.detail) == (Unavailable, "Service Unavailable")


def test_answers_are_read_leniently_or_strictly() -> None:
    answer = response(200, [{"app": "a", "routes": 1, "added_later": True}])
    assert [a.app for a in Reply(answer, "ignore").models(AppOut)] == ["a"]
    with pytest.raises(ApiError, match="does not match AppOut"):
        Reply(answer, "forbid").models(AppOut)
    with pytest.raises(ApiError, match="expected a JSON array"):
        Reply(response(200, {"app": "a"}), "ignore").models(AppOut)
    with pytest.raises(ApiError, match="not JSON"):
        Reply(httpx.Response(200, text="<html>", request=REQUEST)).model(AppOut)


def test_a_plan_yields_its_requests_and_raises_refusals_inside_itself() -> None:
    def plan() -> Plan[str]:
        try:
            yield from request("GET", "/apps/web/routes/9")
        except NotFound:
            yield Pause(0.5)
            reply = yield from request("PUT", "/apps/web/routes", {"port": 1}, ok=(201,))
            return str(reply.json()["id"])
        raise AssertionError("not refused")

    steps = plan()
    assert next(steps) == Request("GET", "/apps/web/routes/9")
    assert steps.send(Reply(problem(404, "no"))) == Pause(0.5)
    assert steps.send(None) == Request("PUT", "/apps/web/routes", {"port": 1})
    with pytest.raises(StopIteration) as done:
        steps.send(Reply(response(201, {"id": 7})))
    assert done.value.value == "7"


METRICS = """\
# HELP restcp_connections_total Client connections relayed to a backend
# TYPE restcp_connections_total counter
restcp_connections_total{app="web",route="1",backend="1"} 3.0
restcp_connections_total{app="web",route="1",backend="2"} 4.0
restcp_connections_total{app="api",route="1",backend="1"} 10.0
# HELP restcp_connections_active Connections open now
# TYPE restcp_connections_active gauge
restcp_connections_active{app="web",route="1",backend="1"} 1.0
"""


def test_metrics_are_parsed_and_summed_by_labels() -> None:
    metrics = Metrics.parse(METRICS)
    assert set(metrics.families) == {"restcp_connections", "restcp_connections_active"}
    assert metrics.value("restcp_connections_total") == 17
    assert metrics.value("restcp_connections_total", app="web") == 7
    assert metrics.value("restcp_connections_total", app="web", backend=2) == 4
    assert metrics.value("restcp_connections_total", app="nope") == 0
    assert metrics.value("restcp_connections_active", route=1) == 1
    assert len(list(metrics.samples())) == 4
