"""Cross-field rules of request models, stated once: the same object writes the rule into the
model's JSON schema (so the OpenAPI document, and clients generated from it, know it) and
checks it when a request is validated, so the two cannot disagree."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel


@dataclass(frozen=True)
class OneOf:
    """Exactly one group of fields is given, whole, and no field of the other groups."""

    groups: tuple[tuple[str, ...], ...]
    message: str

    def _fields(self) -> set[str]:
        return {name for group in self.groups for name in group}

    def schema(self) -> dict[str, Any]:
        every = self._fields()
        branches = []
        for group in self.groups:
            branch: dict[str, Any] = {"required": list(group)}
            others = sorted(every - set(group))
            if others:
                branch["not"] = {"anyOf": [{"required": [name]} for name in others]}
            branches.append(branch)
        return {"oneOf": branches}

    def holds(self, given: set[str]) -> bool:
        every = self._fields()
        return any(
            set(group) <= given and not given & (every - set(group)) for group in self.groups
        )


def rules_schema(*rules: OneOf) -> dict[str, Any]:
    """The `json_schema_extra` of a model bound by `rules` (all of them hold)."""
    if len(rules) == 1:
        return rules[0].schema()
    return {"allOf": [rule.schema() for rule in rules]}


def check_rules(model: BaseModel, rules: Iterable[OneOf]) -> None:
    """Raise ValueError with the first broken rule's message; a field is given if not None."""
    given = {name for name in type(model).model_fields if getattr(model, name) is not None}
    for rule in rules:
        if not rule.holds(given):
            raise ValueError(rule.message)
