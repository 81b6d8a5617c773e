"""json_schemas.closed: objects that list properties admit no other keys, unless the schema says otherwise."""

import copy

from router.front.json_schemas import closed

CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def test_objects_with_properties_are_closed_wherever_they_sit():
    schema = {"type": "object", "properties": {
        "where": CITY, "stops": {"type": "array", "items": CITY}, "pair": {"prefixItems": [CITY, {"$ref": "#/$defs/c"}]},
        "either": {"anyOf": [CITY, {"type": "string"}]}}, "$defs": {"c": CITY}}
    original = copy.deepcopy(schema)
    out = closed(schema)
    assert schema == original  # not changed in place
    assert out["additionalProperties"] is False
    props = out["properties"]
    for sub in (props["where"], props["stops"]["items"], props["pair"]["prefixItems"][0], props["either"]["anyOf"][0],
                out["$defs"]["c"]):
        assert sub["additionalProperties"] is False and sub["properties"] == CITY["properties"]
    assert props["pair"]["prefixItems"][1] == {"$ref": "#/$defs/c"}


def test_what_says_otherwise_or_combines_schemas_stays_open():
    free_dict = {"type": "object"}  # any object: nothing listed to close it to
    told = [dict(CITY, additionalProperties=True), dict(CITY, additionalProperties={"type": "number"}),
            dict(CITY, patternProperties={"^x": {}}), dict(CITY, unevaluatedProperties=False)]
    combined = [dict(CITY, allOf=[{"required": ["city"]}]), dict(CITY, anyOf=[{"required": ["city"]}]),
                dict(CITY, **{"$ref": "#/$defs/c"})]
    for schema in [free_dict, *told, *combined]:
        assert closed(schema).get("additionalProperties") == schema.get("additionalProperties"), schema
    branches = closed({"allOf": [CITY, {"properties": {"unit": {"type": "string"}}}]})["allOf"]
    assert all("additionalProperties" not in b for b in branches)  # one object described by both
    union = closed({"type": "object", "properties": {"kind": {"type": "string"}},  # a branch lists only its part
                    "oneOf": [CITY, {"properties": {"zip": {"type": "string"}}}]})
    assert all("additionalProperties" not in b for b in union["oneOf"]) and "additionalProperties" not in union
    conditional = closed({"if": CITY, "then": CITY, "else": CITY})
    assert all("additionalProperties" not in conditional[k] for k in ("if", "then", "else"))
    nested = closed(dict(CITY, additionalProperties=CITY))["additionalProperties"]
    assert nested["additionalProperties"] is False  # the schema of the other keys is itself closed
