"""Property-based tests (hypothesis) for every exporter: sft, dpo, openai-dpo, kto and hf.

- Round trip: conversations imported from a file come back unchanged from the export (SFT from an
  OpenAI chat JSONL; DPO / OpenAI-DPO / KTO / HF from a TRL preference JSONL).
- Bad input: a database file of arbitrary bytes, malformed rows in the database, and nonsense
  filter values give one clear line (or a clean, valid export), never a traceback, never a file at
  the target, and leave the database byte-for-byte unchanged.

Each example runs on a fresh copy of a migrated template database (fast), in-process.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import string
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from db.engine import make_engine, session_scope
from db.importers import import_preferences, import_prompts
from db.migrate import upgrade
from exports.filters import ExportFilters
from exports.run import ExportOptions, run_export
from tests.reliability_helpers import dump_tables
from therapref.cli import app

pytestmark = pytest.mark.slow
PROPERTY = settings(max_examples=12, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Text that survives the toolkit's normalisation unchanged (NFC, no surrounding blanks), with
# HTML, quotes, newlines and non-Latin scripts mixed in.
_ALPHABET = st.characters(codec="utf-8", categories=("L", "N", "P", "S", "Zs"), exclude_characters="\x00")
_PIECES = st.text(_ALPHABET, min_size=1, max_size=12) | st.sampled_from(
    ["\n", "<b>x</b>", "<script>alert(1)</script>", "é", "😊", "\"", "\\", "שלום", "  "])
TEXT = (st.lists(_PIECES, min_size=1, max_size=6).map("".join)
        .map(lambda s: unicodedata.normalize("NFC", s).strip()).filter(bool))


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tpl") / "template.db"
    engine = make_engine(path)
    upgrade(engine)
    engine.dispose()
    return path


class Fresh:
    """A new database file copied from the template, per hypothesis example."""

    def __init__(self, template: Path, folder: Path) -> None:
        self.template, self.folder, self.n = template, folder, 0

    def __call__(self) -> tuple[Path, str]:
        self.n += 1
        work = self.folder / f"ex{self.n}"
        work.mkdir()
        db = work / "t.db"
        shutil.copyfile(self.template, db)
        return work, f"sqlite:///{db}"


@pytest.fixture
def fresh(template, tmp_path) -> Fresh:
    return Fresh(template, tmp_path)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


conversations = st.lists(
    st.tuples(st.one_of(st.none(), TEXT), st.lists(st.tuples(TEXT, TEXT), min_size=0, max_size=2), TEXT, TEXT),
    min_size=1, max_size=5, unique_by=lambda c: c[2])


@PROPERTY
@given(conversations)
def test_sft_round_trip(fresh, convs):
    """OpenAI chat JSONL (system?, earlier turns, user, assistant) → import → export sft
    --select reference → the same lines."""
    work, url = fresh()
    source = work / "chats.jsonl"
    expected = []
    with source.open("w", encoding="utf-8") as handle:
        for system, history, question, answer in convs:
            messages = ([{"role": "system", "content": system}] if system else [])
            for asked, answered in history:
                messages += [{"role": "user", "content": asked}, {"role": "assistant", "content": answered}]
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            handle.write(json.dumps({"messages": messages}) + "\n")
            expected.append({"messages": messages})
    engine = make_engine(url)
    with session_scope(engine) as session:
        import_prompts(source, session=session)
    out = work / "sft.jsonl"
    run_export("sft", out, engine=engine, filters=ExportFilters(sources="both"),
               options=ExportOptions(selection="reference"))
    key = lambda row: json.dumps(row, sort_keys=True)  # noqa: E731
    assert sorted(map(key, _jsonl(out))) == sorted(map(key, expected))
    engine.dispose()


preference_rows = st.lists(
    st.tuples(st.one_of(st.none(), TEXT), TEXT, TEXT, TEXT).filter(lambda r: r[2] != r[3]),
    min_size=1, max_size=5, unique_by=lambda r: r[1])


def _write_trl(path: Path, rows) -> list[tuple[list[dict], str, str]]:  # noqa: ANN001
    expected = []
    with path.open("w", encoding="utf-8") as handle:
        for system, question, chosen, rejected in rows:
            prompt = [{"role": "system", "content": system}] if system else []
            prompt += [{"role": "user", "content": question}]
            handle.write(json.dumps({"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
                                     "rejected": [{"role": "assistant", "content": rejected}]}) + "\n")
            expected.append((prompt, chosen, rejected))
    return expected


def _triples_dpo(rows: list[dict]) -> list[tuple]:
    return sorted((json.dumps(r["prompt"]), r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows)


def _expected(expected) -> list[tuple]:  # noqa: ANN001
    return sorted((json.dumps(p), c, r) for p, c, r in expected)


@settings(PROPERTY, max_examples=8)
@given(preference_rows)
def test_preference_exports_round_trip(fresh, rows):
    """TRL prompt/chosen/rejected JSONL → import preferences → dpo, openai-dpo, kto and hf exports
    hold exactly the imported conversations and choices."""
    work, url = fresh()
    source = work / "prefs.jsonl"
    assume(all(not (c.strip().lower() == r.strip().lower()) for _, _, c, r in rows))
    expected = _write_trl(source, rows)
    engine = make_engine(url)
    with session_scope(engine) as session:
        import_preferences(source, session=session, dataset="prop")
    imported = ExportFilters(sources="imported")

    run_export("dpo", work / "dpo.jsonl", engine=engine, filters=imported, options=ExportOptions(margin=False))
    assert _triples_dpo(_jsonl(work / "dpo.jsonl")) == _expected(expected)

    run_export("openai-dpo", work / "odpo.jsonl", engine=engine, filters=imported)
    got = sorted((json.dumps(r["input"]["messages"]), r["preferred_output"][0]["content"],
                  r["non_preferred_output"][0]["content"]) for r in _jsonl(work / "odpo.jsonl"))
    assert got == _expected(expected)

    run_export("kto", work / "kto.jsonl", engine=engine, filters=imported)
    kto = sorted((json.dumps(r["prompt"]), r["completion"][0]["content"], bool(r["label"]))
                 for r in _jsonl(work / "kto.jsonl"))
    want = sorted([(json.dumps(p), c, True) for p, c, _ in expected] + [(json.dumps(p), r, False)
                                                                         for p, _, r in expected])
    assert kto == want

    from datasets import load_from_disk

    run_export("hf", work / "hf", engine=engine, filters=imported)
    dataset = load_from_disk(str(work / "hf" / "dataset"))
    split = dataset["train"] if hasattr(dataset, "keys") and "train" in dataset else dataset
    assert _triples_dpo([dict(row) for row in split]) == _expected(expected)
    engine.dispose()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line_error(result) -> str:  # noqa: ANN001
    output = result.output if result.stderr_bytes is None else result.stderr
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert len(lines) == 1, output
    assert lines[0].startswith("Error:"), output
    return lines[0]


KINDS = st.sampled_from(["sft", "dpo", "openai-dpo", "kto", "hf"])


@PROPERTY
@given(KINDS, st.binary(min_size=0, max_size=4096))
def test_arbitrary_bytes_as_database(fresh, kind, blob):
    import sqlite3

    work, _url = fresh()
    bogus = work / "not-a-database.db"
    bogus.write_bytes(blob)
    assume(not blob.startswith(b"SQLite format 3"))
    try:  # SQLite itself takes a 0- or 1-byte file for an empty database
        sqlite3.connect(bogus).execute("PRAGMA schema_version").fetchall()
        sqlite_accepts = True
    except sqlite3.DatabaseError:
        sqlite_accepts = False
    bogus.write_bytes(blob)
    before = _digest(bogus)
    target = work / f"out-{kind}"
    result = CliRunner().invoke(app, ["export", kind, "--output", str(target), "--db", str(bogus)])
    assert result.exit_code == 1, result.output
    line = _one_line_error(result)
    if not sqlite_accepts:
        assert "database" in line.lower()
        assert _digest(bogus) == before, "the file was modified"
    assert not target.exists()


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                           max_leaves=8)


@PROPERTY
@given(KINDS, json_values, st.sampled_from(["messages", "text"]))
def test_malformed_rows_in_the_database(fresh, kind, garbage, column):
    """A prompt whose messages (or a reply whose text) hold something malformed — as an older
    version or a hand edit might leave — gives one clear line or a valid export, never a traceback;
    the database is not changed."""
    from sqlalchemy import text as sql

    from tests.factories import build_scenario

    work, url = fresh()
    engine = make_engine(url)
    with session_scope(engine) as session:
        build_scenario(session)
    with engine.begin() as conn:
        if column == "messages":
            conn.execute(sql("UPDATE prompt SET messages = :m WHERE id = (SELECT MIN(id) FROM prompt)"),
                         {"m": json.dumps(garbage)})
        else:
            value = garbage if isinstance(garbage, str) else json.dumps(garbage)
            conn.execute(sql("UPDATE response SET text = :t WHERE id = (SELECT MIN(id) FROM response)"), {"t": value})
    before = dump_tables(engine)
    target = work / f"out-{kind}"
    result = CliRunner().invoke(app, ["export", kind, "--output", str(target), "--db", url, "--sources", "both"])
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), (
        f"traceback: {result.exception!r}")
    assert "Traceback" not in result.output
    if result.exit_code == 0:
        rows = _jsonl(target) if kind != "hf" else []
        for row in rows:
            for value in _message_lists(row):
                assert all(isinstance(m.get("content"), str) and m.get("role") in ("system", "user", "assistant")
                           for m in value), row
    else:
        assert result.exit_code == 1
        _one_line_error(result)
        assert not target.exists()
    after = dump_tables(engine)
    strip = lambda dump: "\n".join(l for l in dump.splitlines()  # noqa: E731, E741
                                   if not l.startswith(("exportrun:", "auditevent:")))
    assert strip(after) == strip(before), "the export changed the data"
    engine.dispose()


def _message_lists(row: dict) -> list[list[dict]]:
    found = []
    for key in ("messages", "prompt", "chosen", "rejected", "completion"):
        if isinstance(row.get(key), list):
            found.append(row[key])
    if isinstance(row.get("input"), dict):
        found.append(row["input"].get("messages", []))
    return found


bad_filter_args = st.one_of(
    st.tuples(st.just("--since"), st.text(string.printable, min_size=1, max_size=20)),
    st.tuples(st.just("--until"), st.text(string.ascii_letters, min_size=1, max_size=20)),
    st.tuples(st.just("--min-agreement"), st.floats(min_value=1.01, max_value=1e6).map(str)),
    st.tuples(st.just("--min-votes"), st.integers(max_value=0).map(str)),
    st.tuples(st.just("--candidate"), TEXT.map(lambda s: "no-such-" + s)),
    st.tuples(st.just("--guideline-version"), st.integers(min_value=1000, max_value=10**6).map(str)),
)


@PROPERTY
@given(KINDS, bad_filter_args)
def test_nonsense_filters_give_one_line(fresh, kind, arg):
    from datetime import datetime

    from tests.factories import build_scenario

    option, value = arg
    if option in ("--since", "--until"):
        try:
            datetime.fromisoformat(value.strip())
            assume(False)  # a valid date is not nonsense
        except ValueError:
            pass
    work, url = fresh()
    engine = make_engine(url)
    with session_scope(engine) as session:
        build_scenario(session)
    before = dump_tables(engine)
    target = work / f"out-{kind}"
    result = CliRunner().invoke(app, ["export", kind, "--output", str(target), "--db", url, option, value])
    assert result.exit_code == 1, result.output
    _one_line_error(result)
    assert not target.exists()
    assert dump_tables(engine) == before
    engine.dispose()
