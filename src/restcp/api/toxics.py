"""The request bodies of a route's toxics (docs/toxics.md).

core/toxics.py is the one definition of what a toxic takes. The bodies here check the JSON
types only; ``ToxicBody.toxic()`` and ``ToxicPatchBody.apply()`` leave the rest to it (a
ToxicError, which the API answers with 422 naming the field), and the JSON Schema of each
(the OpenAPI document's) is generated from its SPECS, so that the document, the checks and
docs/toxics.md cannot disagree. Their answers are ``schemas.ToxicOut``.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import ConfigDict, Field, PlainValidator, StrictStr

from restcp.api.schemas import RequestBody
from restcp.core import toxics
from restcp.model import Stream, Toxic, ToxicType

NAME_SCHEMA: dict[str, Any] = {
    "type": "string",
    "pattern": f"^[A-Za-z0-9_.-]{{1,{toxics.NAME_MAX}}}$",
    "not": {"enum": [".", ".."]},
}
# A CIDR network (an address alone is its /32 or /128); "cidr" is not a format JSON Schema
# defines, so a generator must be told what one is (tests/e2e/openapi_hooks.py).
_CIDR_SCHEMA: dict[str, Any] = {"type": "string", "format": "cidr"}
_TOXICITY_SCHEMA: dict[str, Any] = {
    "type": "number",
    "minimum": 0,
    "maximum": 1,
    "description": "the chance that a connection meets the toxic, drawn once per connection",
}


def _toxicity(value: object) -> float:
    try:
        return toxics.check_toxicity(value)
    except toxics.ToxicError as err:
        raise ValueError(err.message) from None


# One check and one error for a JSON number (a union would report one per member).
Toxicity = Annotated[float, PlainValidator(_toxicity)]


def _attribute_schema(attribute: toxics.Attribute, default: bool) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "integer",
        "minimum": attribute.low,
        "maximum": attribute.high,
        "description": f"{attribute.meaning} ({attribute.unit})",
    }
    if default and attribute.default is not None:
        schema["default"] = attribute.default
    return schema


def _attributes_schema(type_: ToxicType, *, creating: bool) -> dict[str, Any]:
    """The ``attributes`` of a toxic of ``type_``: on creation, those without a default are
    required; in a PATCH, any of them (merged over the toxic's)."""
    spec = toxics.SPECS[type_]
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {k: _attribute_schema(a, creating) for k, a in spec.items()},
        "additionalProperties": False,
    }
    required = [k for k, a in spec.items() if a.default is None]
    if creating and required:
        schema["required"] = required
    return schema


def _toxic_body_schema(schema: dict[str, Any]) -> None:
    """The creation body, one alternative per type: the ``attributes`` it takes go with
    ``type``. A slicer's size_variation must also be less than its average_size, which
    JSON Schema cannot say."""
    schema["properties"] = {
        "name": {
            "anyOf": [NAME_SCHEMA, {"type": "null"}],
            "default": None,
            "description": f"{toxics.NAME_RULE}; default <type>_<stream>",
        },
        "type": {"enum": list(toxics.SPECS)},
        "stream": {
            "enum": list(toxics.STREAMS),
            "default": "downstream",
            "description": "upstream: client to backend; downstream: backend to client",
        },
        "toxicity": {**_TOXICITY_SCHEMA, "default": 1},
        "attributes": {"type": "object", "description": "by type: docs/toxics.md"},
        "clients": {
            "type": "array",
            "items": _CIDR_SCHEMA,
            "default": [],
            "description": "CIDR networks: only connections from them meet the toxic (empty: all)",
        },
    }
    schema["required"] = ["type"]
    schema["oneOf"] = [_alternative(type_) for type_ in toxics.SPECS]


def _alternative(type_: ToxicType) -> dict[str, Any]:
    attributes = _attributes_schema(type_, creating=True)
    alternative: dict[str, Any] = {
        "properties": {"type": {"const": type_}, "attributes": attributes}
    }
    if "required" in attributes:
        alternative["required"] = ["attributes"]
    return alternative


def _toxic_patch_schema(schema: dict[str, Any]) -> None:
    """A PATCH: the attributes are those of the toxic's type (422 for another type's), so
    the document lists every type's, each with the widest range any type gives it."""
    merged: dict[str, dict[str, Any]] = {}
    for spec in toxics.SPECS.values():
        for key, attribute in spec.items():
            widest = _attribute_schema(attribute, False)
            known = merged.get(key)
            if known is not None:
                widest["minimum"] = min(widest["minimum"], known["minimum"])
                widest["maximum"] = max(widest["maximum"], known["maximum"])
                widest["description"] = "by type: docs/toxics.md"
            merged[key] = widest
    schema["properties"] = {
        "type": {"enum": list(toxics.SPECS), "description": "only as it is: it cannot change"},
        "stream": {"enum": list(toxics.STREAMS), "description": "only as it is: it cannot change"},
        "toxicity": _TOXICITY_SCHEMA,
        "attributes": {
            "type": "object",
            "properties": merged,
            "additionalProperties": False,
            "description": "those of the toxic's type, merged over its current ones",
        },
        "clients": {"type": "array", "items": _CIDR_SCHEMA, "description": "replaces the list"},
    }


class ToxicBody(RequestBody):
    """A new toxic (PUT/POST on a route's toxics): ``type`` is required, the rest take their
    defaults; ``toxic()`` checks it whole (core.toxics)."""

    model_config = ConfigDict(json_schema_extra=_toxic_body_schema)

    name: StrictStr | None = None
    type: ToxicType
    stream: Stream = "downstream"
    toxicity: Toxicity = 1.0
    attributes: dict[str, Any] = Field(default_factory=dict)
    clients: list[Any] = Field(default_factory=list)

    def toxic(self) -> Toxic:
        """The toxic asked for, every attribute filled in; ToxicError naming a bad field."""
        return Toxic(
            name=toxics.check_name(
                toxics.default_name(self.type, self.stream) if self.name is None else self.name
            ),
            type=self.type,
            stream=self.stream,
            toxicity=self.toxicity,
            attributes=toxics.attributes(self.type, self.attributes),
            clients=toxics.check_clients(self.clients),
        )


class ToxicPatchBody(RequestBody):
    """A PATCH of a toxic: ``attributes`` merge over its current ones, ``toxicity`` and
    ``clients`` replace theirs; ``type`` and ``stream`` may be sent only as they are."""

    model_config = ConfigDict(json_schema_extra=_toxic_patch_schema)

    # Defaults never used: only the fields given count (given()).
    type: ToxicType = "latency"
    stream: Stream = "downstream"
    toxicity: Toxicity = 1.0
    attributes: dict[str, Any] = Field(default_factory=dict)
    clients: list[Any] = Field(default_factory=list)

    def apply(self, toxic: Toxic) -> Toxic:
        """``toxic`` changed as asked; ToxicError naming a bad field."""
        given = self.given()
        kept = {"type": toxic.type, "stream": toxic.stream}
        moved = {k: v for k, v in given.items() if k in kept and v != kept[k]}
        if moved:
            # Refused by the route service, which keeps a toxic's type and stream.
            return toxic.replace(**moved)
        changes: dict[str, Any] = {}
        if "toxicity" in given:
            changes["toxicity"] = self.toxicity
        if "attributes" in given:
            changes["attributes"] = toxics.attributes(
                toxic.type, self.attributes, dict(toxic.attributes)
            )
        if "clients" in given:
            changes["clients"] = toxics.check_clients(self.clients)
        return toxic.replace(**changes)
