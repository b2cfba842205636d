"""Layers point one way (docs/architecture.md): every import in the product's packages is checked,
including imports inside functions, so that a shortcut through the CLI or the app fails here."""

from __future__ import annotations

import ast
import re
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


# --- The owner table of docs/architecture.md against the code --------------------------------------------------------

ARCHITECTURE = ROOT / "docs" / "architecture.md"
# Where a second definition of an owned name would be a second home: the product's packages and the benchmarks.
SCANNED = (*PACKAGES, "bench")
TOKEN = re.compile(r"`([^`]+)`|(\()|(\))")
MODULE = re.compile(r"^[a-z_]+(?:/[a-z_0-9]+)*(?:\.py)?$")
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def owner_table(text: str) -> list[tuple[str, list[tuple[str, list[str]]]]]:
    """The rows of the table under "Where each idea lives": (idea, [(owner module, names it defines)]).

    In the owner cell each backticked path names an owner module; the backticked identifiers in the
    parentheses after it are names that module defines (prose in the parentheses is skipped).

    >>> text = ("## Where each idea lives\\n\\n| idea | owner | used by |\\n| --- | --- | --- |\\n"
    ...         "| votes | `db/rules.py` (`majority_label`; pure) | x |\\n"
    ...         "| loop | `policy/iterate.py` (`run_loop`; the edge's `therapref/cli/loop.py` `online_steps`) | y |\\n"
    ...         "\\n## Next\\n")
    >>> owner_table(text)  # doctest: +NORMALIZE_WHITESPACE
    [('votes', [('db/rules.py', ['majority_label'])]),
     ('loop', [('policy/iterate.py', ['run_loop']), ('therapref/cli/loop.py', ['online_steps'])])]
    """
    section = text.split("## Where each idea lives", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if not line.startswith("|") or len(cells) < 3 or cells[0] in ("idea", "---"):
            continue
        owners: list[tuple[str, list[str]]] = []
        depth = 0
        for token, opening, closing in TOKEN.findall(cells[1]):
            if opening or closing:
                depth += 1 if opening else -1
            elif MODULE.match(token) and "/" in token:
                owners.append((token, []))
            elif depth > 0 and owners and NAME.match(token):
                owners[-1][1].append(token)
        rows.append((cells[0], owners))
    return rows


def top_level_names(path: Path) -> set[str]:
    """Names a module defines at its top level: functions, classes, assigned names (not imports)."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def _definitions() -> dict[str, set[str]]:
    """Top-level name -> the modules (repository paths) that define it, across SCANNED."""
    where: dict[str, set[str]] = {}
    for package in SCANNED:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            for name in top_level_names(path):
                where.setdefault(name, set()).add(path.relative_to(ROOT).as_posix())
    return where


OWNERS = owner_table(ARCHITECTURE.read_text(encoding="utf-8"))
OWNED = [(idea, module, name) for idea, owners in OWNERS for module, names in owners for name in names]


def test_the_owner_table_is_read():
    assert len(OWNERS) >= 40
    assert ("who counts as a clinician", "db/rules.py", "CLINICIAN_ROLES") in {
        (idea.split(" (")[0], module, name) for idea, module, name in OWNED}
    assert len(OWNED) >= 60


@pytest.mark.parametrize("idea, owners", OWNERS, ids=[idea[:40] for idea, _ in OWNERS])
def test_every_owner_in_the_table_exists(idea, owners):
    assert owners, f"{idea!r}: the owner cell names no module"
    for module, _ in owners:
        assert (ROOT / module).exists(), f"{idea!r}: {module} does not exist"


def test_every_owned_name_is_defined_in_its_owner_only():
    where = _definitions()
    problems = []
    for idea, module, name in OWNED:
        homes = where.get(name, set())
        if module not in homes:
            problems.append(f"{idea!r}: {module} does not define {name}")
        others = sorted(homes - {module})
        if others:
            problems.append(f"{idea!r}: {name} is owned by {module} but also defined in {', '.join(others)}")
    assert not problems, "\n".join(problems)


# "One style" (docs/architecture.md): ORM queries are ``session.exec(select(...))``; the app's hot path
# runs prebuilt Core statements and says so where it does.
CORE_QUERY_MODULES = {"db/assignment.py", "db/queue.py"}


def test_queries_use_session_exec_outside_the_hot_path():
    offenders = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative in CORE_QUERY_MODULES:
                continue
            text = path.read_text(encoding="utf-8")
            for match in re.finditer(r"session\.execute\(\s*select\(", text):
                offenders.append(f"{relative}:{text.count(chr(10), 0, match.start()) + 1}")
    assert not offenders, f"session.execute(select(...)) instead of session.exec: {offenders}"
