"""Helpers for the export tests: the conversations an export should contain for a
``tests.factories.build_scenario`` database."""

from __future__ import annotations

from tests.factories import SYSTEM, Scenario


def conv(sc: Scenario, key: str, system: str | None = SYSTEM) -> list[dict[str, str]]:
    head = [{"role": "system", "content": system}] if system else []
    return head + sc.prompts[key]


def asst(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]
