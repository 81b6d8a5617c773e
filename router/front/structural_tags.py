"""vLLM's structural tags: free text in which each tagged segment is held to a JSON schema (tool calls in a
model's own format, such as Llama 3.1's `<function=NAME>{...}</function>`).

A spec is `{"structures": [{"begin", "schema", "end"}, ...], "triggers": [...]}`, from `response_format`
(`type: "structural_tag"`), `structured_outputs.structural_tag` or the older top-level `structural_tag` (JSON
text). Each structure's `begin` starts with one of the triggers; the text runs free until a trigger appears,
then goes on as one of the structures that begin with it: its begin, a JSON value of its schema, its end,
then free text again. llguidance's StructTag writes the grammar (lazy lexemes end the free text at the
trigger), as vLLM's guidance backend has it write it.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_STRUCTURES = 64


class Structure(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    begin: str = Field(min_length=1)
    json_schema: dict = Field(alias="schema")
    end: str


class StructuralTag(BaseModel):
    model_config = ConfigDict(extra="ignore")

    structures: list[Structure] = Field(min_length=1, max_length=MAX_STRUCTURES)
    triggers: list[str] = Field(min_length=1, max_length=MAX_STRUCTURES)


def structural_tag_grammar(spec: dict | str) -> str:
    """llguidance's grammar text for a structural tag spec (a dict, or JSON text of one); ValueError naming
    what is wrong with it."""
    import llguidance

    tag = _parsed(spec)
    if any(not trigger for trigger in tag.triggers):
        raise ValueError("structural tag triggers must be non-empty strings")
    tags = []
    for structure in tag.structures:
        trigger = next((t for t in tag.triggers if structure.begin.startswith(t)), None)
        if trigger is None:
            raise ValueError(f"structural tag begin {structure.begin!r} starts with none of the triggers "
                             f"{tag.triggers}")
        tags.append(llguidance.StructTag(trigger=trigger, begin=structure.begin, grammar=structure.json_schema,
                                         end=structure.end))
    return llguidance.LLMatcher.grammar_from_lark(llguidance.StructTag.to_grammar(tags))


def _parsed(spec: dict | str) -> StructuralTag:
    try:
        return StructuralTag.model_validate(json.loads(spec) if isinstance(spec, str) else spec)
    except ValueError as exc:  # bad JSON text, or a ValidationError
        first = exc.errors()[0] if isinstance(exc, ValidationError) else None
        where = ".".join(map(str, first["loc"])) + ": " + first["msg"] if first else str(exc)
        raise ValueError(f"not a structural tag spec ({where})") from None
