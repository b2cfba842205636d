"""Layers point one way (docs/architecture.md): every import in the product's packages is checked,
including imports inside functions, so that a shortcut through the CLI or the app fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
AREAS = ("candidates", "reward", "exports", "analytics", "policy")
PACKAGES = ("db", *AREAS, "labeling_app", "therapref")
# What each package may import from the project (besides itself). The CLI (``therapref.cli``) and the
# app are edges: nothing imports them. ``therapref`` alone (the core: settings, version) is readable
# by every layer above ``db``.
ALLOWED: dict[str, set[str]] = {
    "db": set(),
    **{area: {"db", "therapref.core", *AREAS} for area in AREAS},
    "labeling_app": {"db", "therapref.core", *AREAS},
    "therapref": {"db", "therapref.core", *AREAS, "labeling_app"},
}
# Sibling areas import each other only through these owners (one owner per idea).
SHARED_OWNERS = {"reward.scoring", "analytics.bradley_terry", "candidates.embedded",
                 # generating replies (an A/B test generates both candidates' replies, as `therapref generate`)
                 "candidates.generate",
                 # best-of-n: N samples of a configuration, the reward model's (safe) best (the loop registers
                 # best-of-n candidates; rejection sampling draws its training replies this way)
                 "candidates.best_of_n",
                 # loading a llama.cpp model safely (no AMX buffers where they crash): the RL trainers' rollouts
                 # run the policy's GGUF in-process, as the llamacpp provider does
                 "candidates.llama_compat",
                 # the machine: accelerators, native bf16, free CPU cores, base models and their LoRA config
                 # (policy training too)
                 "reward.resources",
                 # the export row format (writer, reader, kinds' signatures, manifest): policy training reads
                 # the exports it trains on through it
                 "exports.formats"}
# The core of ``therapref`` that every layer may read; everything else under it is the CLI.
CORE = {"therapref", "therapref.settings", "therapref.config_cli"}
# ``db`` reads no other package, and neither db nor the areas reach for the edges' frameworks.
FORBIDDEN_THIRD_PARTY = {"db": {"streamlit", "typer", "torch"}, **{area: {"streamlit", "typer"} for area in AREAS}}


def _imports(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.extend((f"{node.module}.{alias.name}", node.lineno) for alias in node.names)
    return found


def _kind(module: str) -> str | None:
    """The project package a dotted name belongs to ('therapref.core' for the CLI-free core)."""
    top = module.split(".")[0]
    if top not in PACKAGES:
        return None
    if top == "therapref":
        parts = module.split(".")
        return "therapref.core" if ".".join(parts[:2]) in CORE or parts == ["therapref", "__version__"] else "therapref"
    return top


def _violations(package: str) -> list[str]:
    problems = []
    for path in sorted((ROOT / package).rglob("*.py")):
        if "migrations" in path.parts or path.name == "conftest.py":
            continue
        here = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        own = "therapref" if package == "therapref" else package
        for module, line in _imports(path):
            kind = _kind(module)
            where = f"{path.relative_to(ROOT)}:{line} imports {module}"
            if module.split(".")[0] in FORBIDDEN_THIRD_PARTY.get(package, set()):
                problems.append(where)
            if kind is None or kind == own or (package == "therapref" and kind == "therapref.core"):
                continue
            if kind not in ALLOWED[package]:
                problems.append(where)
            elif kind in AREAS and package in AREAS and not any(
                    module == owner or module.startswith(owner + ".") for owner in SHARED_OWNERS):
                problems.append(f"{where} (siblings share only: {', '.join(sorted(SHARED_OWNERS))})")
            if package == "therapref" and here.startswith("therapref.settings") and kind != "therapref.core":
                problems.append(where)
    return problems


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_down(package):
    assert _violations(package) == []


def test_the_core_of_therapref_holds_no_commands():
    core_files = {p.name for p in (ROOT / "therapref").glob("*.py")}
    assert core_files <= {"__init__.py", "settings.py", "config_cli.py"}, "commands live in therapref/cli/"
    assert (ROOT / "therapref" / "cli" / "__main__.py").is_file(), "`python -m therapref.cli` (accelerate launch)"


def test_the_core_config_helper_imports_only_the_standard_library_at_import_time():
    """Areas read ``therapref.config_cli`` (TOML loading); typer, click and rich are imported only inside
    the functions that build command-line options."""
    import sys

    tree = ast.parse((ROOT / "therapref" / "config_cli.py").read_text(encoding="utf-8"))
    top = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    top |= {node.module.split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
    assert top <= set(sys.stdlib_module_names) | {"__future__"}
