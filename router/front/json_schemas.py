"""Closing a JSON schema's objects: no keys beyond those it lists, unless it says otherwise.

In JSON Schema an object admits keys it does not list unless `additionalProperties` is false.
Tool definitions rarely say so, and a model constrained by an open schema can keep writing keys:
SmolLM2-135M, told to call `get_weather(city, unit)` for "Is it cold in Montreal today, in
Fahrenheit?", wrote `{"city": "Montreal", "type": "string", "properties": {...}, ...}` (words of
the schema it was shown) until max_tokens, on 3 of 6 such questions. OpenAI's strict mode and vLLM's
grammar backend (xgrammar's strict mode) read such schemas as closed; tools.py closes tool
parameters, and a `response_format` json_schema with `strict: true` is closed too.

Only objects that list `properties` are closed (a bare `{"type": "object"}` stays any object),
and only those that say nothing of other keys (`additionalProperties`, `patternProperties`,
`unevaluatedProperties`) and combine no other schemas at their level (`allOf`, `anyOf`, `oneOf`,
`$ref`, `if`, ...: their properties would count as other keys). Subschemas are closed by the same
rule wherever they sit, but for branches that describe only part of an object: an `allOf`'s, `then` and
`else`, and `anyOf` / `oneOf` alternatives next to properties of their own level.
"""

from __future__ import annotations

OPEN_KEYS = ("additionalProperties", "patternProperties", "unevaluatedProperties")
COMBINING = ("allOf", "anyOf", "oneOf", "$ref", "if", "dependentSchemas", "dependencies", "not")
SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")  # each value: an instance of its own
SCHEMA_VALUES = ("additionalProperties", "items", "contains", "prefixItems")


def closed(schema, closable: bool = True):
    """A copy of `schema` with its objects closed (the input is not changed)."""
    if not isinstance(schema, dict):
        return [closed(s, closable) for s in schema] if isinstance(schema, list) else schema
    out = dict(schema)
    for key in SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: closed(sub) for name, sub in out[key].items()}
    for key in SCHEMA_VALUES:
        if isinstance(out.get(key), (dict, list)):
            out[key] = closed(out[key])
    # branches describe this same instance: alternatives are whole objects unless this level lists properties
    # too (then a branch lists only its part); allOf's parts and if/then/else are never whole
    for key, whole in (("anyOf", "properties" not in out), ("oneOf", "properties" not in out), ("allOf", False),
                       ("then", False), ("else", False)):
        if isinstance(out.get(key), (dict, list)):
            out[key] = closed(out[key], closable=whole)
    if closable and "properties" in out and not any(key in out for key in (*OPEN_KEYS, *COMBINING)):
        out["additionalProperties"] = False
    return out
