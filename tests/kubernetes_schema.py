"""A strict check of Kubernetes objects (the API's JSON, camelCase) against the OpenAPI schema
as the official client's generated models carry it: each model's ``openapi_types`` (field →
type) and ``attribute_map`` (field → JSON key).

``ApiClient.deserialize`` alone ignores keys it does not know, so a misspelt field
(``readOnlyRootFileSystem``) would pass it and be dropped by the API server: here an unknown
key fails, a value of the wrong type fails, and a field the model requires must be there.
"""

from __future__ import annotations

import re
from typing import Any

import kubernetes.client as k8s

_LIST = re.compile(r"^(?:list|List)\[(?P<item>.+)\]$")
_DICT = re.compile(
    r"^(?:dict|Dict)\((?P<key>[^,]+),\s*(?P<value>.+)\)$|^Dict\[(?P<k2>[^,]+),\s*(?P<v2>.+)\]$"
)
_GROUP_PREFIX = {
    "v1": "V1",
    "apps/v1": "V1",
    "networking.k8s.io/v1": "V1",
    "rbac.authorization.k8s.io/v1": "V1",
    "policy/v1": "V1",
    "authorization.k8s.io/v1": "V1",
}


class SchemaError(AssertionError):
    """An object that the API's schema does not describe."""


def model_for(document: dict[str, Any]) -> type[Any]:
    """The model class of a top-level object, from its apiVersion and kind."""
    api_version, kind = document.get("apiVersion"), document.get("kind")
    prefix = _GROUP_PREFIX.get(str(api_version))
    model = getattr(k8s, f"{prefix}{kind}", None) if prefix else None
    if model is None:
        raise SchemaError(f"no model for apiVersion {api_version!r} kind {kind!r}")
    return model  # type: ignore[no-any-return]


def validate(document: dict[str, Any]) -> None:
    """Raises SchemaError naming the first path the schema does not accept."""
    validate_as(document, model_for(document), document.get("kind", "?"))


def required_fields(model: type[Any]) -> set[str]:
    """The model's fields that must be set (pydantic models say it; the older generated
    models refuse ``None`` in their setter)."""
    fields = getattr(model, "model_fields", None)
    if isinstance(fields, dict):
        return {name for name, info in fields.items() if info.is_required()}
    required = set()
    probe: Any = object.__new__(model)
    probe.local_vars_configuration = k8s.Configuration()
    for name in model.openapi_types:
        try:
            setattr(probe, name, None)
        except ValueError:
            required.add(name)
    return required


def validate_as(value: Any, model: type[Any], path: str) -> None:
    if not isinstance(value, dict):
        raise SchemaError(f"{path}: expected an object ({model.__name__}), got {value!r}")
    by_key = {model.attribute_map[name]: name for name in model.openapi_types}
    for key, item in value.items():
        if key not in by_key:
            raise SchemaError(f"{path}: unknown field {key!r} for {model.__name__}")
        if item is None:
            raise SchemaError(f"{path}.{key}: null")
        check_type(item, model.openapi_types[by_key[key]], f"{path}.{key}")
    for name in required_fields(model):
        if model.attribute_map[name] not in value:
            raise SchemaError(f"{path}: {model.__name__} requires {model.attribute_map[name]!r}")


def check_type(value: Any, kind: str, path: str) -> None:
    kind = kind.strip()
    listed = _LIST.match(kind)
    if listed:
        if not isinstance(value, list):
            raise SchemaError(f"{path}: expected a list, got {value!r}")
        for index, item in enumerate(value):
            check_type(item, listed.group("item"), f"{path}[{index}]")
        return
    mapped = _DICT.match(kind)
    if mapped:
        if not isinstance(value, dict):
            raise SchemaError(f"{path}: expected a map, got {value!r}")
        value_kind = mapped.group("value") or mapped.group("v2")
        for key, item in value.items():
            if not isinstance(key, str):
                raise SchemaError(f"{path}: key {key!r} is not a string")
            check_type(item, value_kind, f"{path}[{key}]")
        return
    primitive = {
        "str": (str,),
        "int": (int,),
        "float": (int, float),
        "bool": (bool,),
        "datetime": (str,),
        "date": (str,),
        "bytearray": (str,),
    }
    if kind in primitive:
        if kind in ("int", "float") and isinstance(value, bool):
            raise SchemaError(f"{path}: expected {kind}, got a boolean")
        if not isinstance(value, primitive[kind]):
            raise SchemaError(f"{path}: expected {kind}, got {value!r}")
        return
    if kind == "object":
        # IntOrString (a port, a quantity) or free-form: a scalar or an object.
        if not isinstance(value, (str, int, float, dict, list)) or isinstance(value, bool):
            raise SchemaError(f"{path}: expected int-or-string, got {value!r}")
        return
    model = getattr(k8s, kind, None)
    if model is None or not hasattr(model, "openapi_types"):
        raise SchemaError(f"{path}: the schema names an unknown type {kind!r}")
    validate_as(value, model, path)
