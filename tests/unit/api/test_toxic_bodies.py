"""api/toxics.py: a toxic's request bodies. Their JSON Schema (the OpenAPI document's) is
generated from core.toxics.SPECS and the checks are core.toxics' own, so the two must agree:
every body the document calls valid is accepted and every one it calls invalid is refused,
but for the one rule JSON Schema cannot state (a slicer's size_variation below its
average_size)."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from restcp.api.openapi import build_spec
from restcp.api.toxics import ToxicBody, ToxicPatchBody
from restcp.core.toxics import SPECS, ToxicError
from restcp.model import Toxic

SCHEMAS = build_spec()["components"]["schemas"]


def valid_by_document(model: str, body: Any) -> bool:
    document = {"$ref": f"#/components/schemas/{model}", "components": {"schemas": SCHEMAS}}
    return jsonschema.Draft202012Validator(document).is_valid(body)


def accepted(body: Any) -> bool:
    try:
        ToxicBody.model_validate(body).toxic()
    except (ValidationError, ToxicError):
        return False
    return True


def bounds(type_: str, end: str) -> dict[str, int]:
    values = {k: getattr(a, end) for k, a in SPECS[type_].items()}  # type: ignore[index]
    if type_ == "slicer":
        values["size_variation"] = values["average_size"] - 1
    return values


VALID: list[Any] = [
    {"type": "latency"},
    {"type": "bandwidth", "attributes": {"rate": 1}},
    {"type": "limit_data", "attributes": {"bytes": 0}, "stream": "upstream"},
    {"type": "limit_time", "attributes": {"time": 86_400_000}, "toxicity": 0},
    {"type": "timeout", "name": "x.Y_z-9", "toxicity": 0.5, "clients": []},
    {"type": "reset_peer", "name": None, "attributes": {"timeout": 200.0}},
    {"type": "slow_close", "name": "a" * 64, "toxicity": 1, "clients": ["10.0.0.0/8"]},
    *({"type": t, "attributes": bounds(t, "low")} for t in SPECS),
    *({"type": t, "attributes": bounds(t, "high")} for t in SPECS),
]

INVALID: list[Any] = [
    {},
    {"type": "lag"},
    {"type": None},
    {"type": "latency", "stream": "sideways"},
    {"type": "latency", "extra": 1},
    {"type": "bandwidth"},
    {"type": "bandwidth", "attributes": {}},
    {"type": "bandwidth", "attributes": {"rate": 0}},
    {"type": "latency", "attributes": {"rate": 5}},
    {"type": "latency", "attributes": {"latency": 1.5}},
    {"type": "latency", "attributes": {"latency": "1"}},
    {"type": "latency", "attributes": {"latency": True}},
    {"type": "latency", "attributes": {"latency": None}},
    {"type": "latency", "attributes": []},
    {"type": "latency", "toxicity": 1.01},
    {"type": "latency", "toxicity": -0.5},
    {"type": "latency", "toxicity": True},
    {"type": "latency", "toxicity": "1"},
    {"type": "latency", "clients": "10.0.0.0/8"},
    {"type": "latency", "clients": [8]},
    *({"type": "latency", "name": name} for name in ("", ".", "..", "a/b", "é", "a" * 65, 7)),
    *(
        {"type": t, "attributes": {**bounds(t, "low"), k: a.low - 1}}
        for t, spec in SPECS.items()
        for k, a in spec.items()
    ),
    *(
        {"type": t, "attributes": {**bounds(t, "high"), k: a.high + 1}}
        for t, spec in SPECS.items()
        for k, a in spec.items()
    ),
]


@pytest.mark.parametrize("body", VALID)
def test_what_the_document_calls_valid_is_accepted(body: Any) -> None:
    assert valid_by_document("ToxicBody", body)
    assert accepted(body)


@pytest.mark.parametrize("body", INVALID)
def test_what_the_document_calls_invalid_is_refused(body: Any) -> None:
    assert not valid_by_document("ToxicBody", body)
    assert not accepted(body)


def test_the_rule_json_schema_cannot_state() -> None:
    body = {"type": "slicer", "attributes": {"average_size": 8, "size_variation": 8}}
    assert valid_by_document("ToxicBody", body)
    with pytest.raises(ToxicError) as err:
        ToxicBody.model_validate(body).toxic()
    assert err.value.field == "attributes.size_variation"


def test_a_bad_field_is_named() -> None:
    for body, field in (
        ({"type": "bandwidth", "attributes": {"rate": 0}}, "attributes.rate"),
        ({"type": "bandwidth"}, "attributes.rate"),
        ({"type": "latency", "attributes": {"rate": 1}}, "attributes.rate"),
        ({"type": "latency", "clients": ["10.0.0.0/8", "nope"]}, "clients.1"),
        ({"type": "latency", "name": ".."}, "name"),
    ):
        with pytest.raises(ToxicError) as err:
            ToxicBody.model_validate(body).toxic()
        assert err.value.field == field, body
    # Toxicity is checked as the body is read, by core.toxics all the same.
    with pytest.raises(ValidationError) as invalid:
        ToxicBody.model_validate({"type": "latency", "toxicity": 2})
    assert [e["loc"] for e in invalid.value.errors()] == [("toxicity",)]
    assert "must be a number from 0 to 1" in str(invalid.value)


def test_a_new_toxic_takes_the_defaults() -> None:
    assert ToxicBody.model_validate({"type": "latency", "stream": "upstream"}).toxic() == Toxic(
        "latency_upstream", "latency", "upstream", 1.0, (("jitter", 0), ("latency", 0)), ()
    )
    clients = ToxicBody.model_validate({"type": "timeout", "clients": ["10.1.2.3", "::1"]})
    assert clients.toxic().clients == ("10.1.2.3/32", "::1/128")


SLOW = Toxic("slow", "latency", "downstream", 0.5, (("jitter", 5), ("latency", 200)), ("::1/128",))


def patched(body: Any, toxic: Toxic = SLOW) -> Toxic:
    return ToxicPatchBody.model_validate(body).apply(toxic)


def test_a_patch_merges_attributes_and_replaces_toxicity_and_clients() -> None:
    assert patched({}) == SLOW
    assert patched({"attributes": {"latency": 300}}).attributes == (("jitter", 5), ("latency", 300))
    assert patched({"attributes": {}}) == SLOW
    assert patched({"toxicity": 1}).toxicity == 1.0
    assert patched({"clients": []}).clients == ()
    assert patched({"clients": ["10.0.0.0/8"]}).clients == ("10.0.0.0/8",)
    # Type and stream as they are change nothing.
    assert patched({"type": "latency", "stream": "downstream", "toxicity": 0}).toxicity == 0.0


def test_a_patch_that_moves_the_type_or_stream_leaves_the_refusal_to_the_route_service() -> None:
    # The route service keeps a toxic's type and stream (tests/unit/control): the body
    # passes the change on untouched, whatever else it asks.
    moved = patched({"type": "timeout", "attributes": {"timeout": 5}})
    assert (moved.type, moved.attributes) == ("timeout", SLOW.attributes)
    assert patched({"stream": "upstream"}).stream == "upstream"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"attributes": {"rate": 5}}, "attributes.rate"),
        ({"attributes": {"latency": -1}}, "attributes.latency"),
        ({"clients": ["x"]}, "clients.0"),
    ],
)
def test_a_bad_patch_names_its_field(body: Any, field: str) -> None:
    with pytest.raises(ToxicError) as err:
        patched(body)
    assert err.value.field == field


@pytest.mark.parametrize(
    "body", [{"name": "x"}, {"type": None}, {"toxicity": None}, {"attributes": None}, {"x": 1}]
)
def test_what_a_patch_cannot_carry(body: Any) -> None:
    assert not valid_by_document("ToxicPatchBody", body)
    with pytest.raises(ValidationError):
        ToxicPatchBody.model_validate(body)
