"""Property-based tests (hypothesis) for every importer: generated conversations and preference
pairs round-trip through the database; arbitrary bytes and malformed records give the one-line
``ImportFormatError`` and leave the database unchanged (never another exception)."""

from __future__ import annotations

import csv
import io
import itertools
import json
import unicodedata
import zipfile

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlmodel import Session, delete, select

from db.engine import make_engine, session_scope
from db.hashing import normalize_text
from db.importers import ImportFormatError, import_preferences, import_prompts
from db.migrate import upgrade
from db.models import Annotator, AuditEvent, CandidateModel, Comparison, Judgment, Prompt, Response
from tests.importers_helpers import counts, run_import

PROPERTY = settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
PROMPT_FORMATS = ["openai-jsonl", "counselchat", "dialogflow", "plaintext"]
PREFERENCE_FORMATS = ["trl", "hh-rlhf", "counselchat-upvotes"]
_names = itertools.count()


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    folder = tmp_path_factory.mktemp("props")
    engine = make_engine(folder / "therapref.db")
    upgrade(engine)
    yield engine, folder
    engine.dispose()


def _wipe(engine) -> None:
    with session_scope(engine) as session:
        for model in (Judgment, Comparison, Response, Prompt, CandidateModel, Annotator, AuditEvent):
            session.exec(delete(model))


def _file(folder, suffix: str, data: bytes):
    path = folder / f"f{next(_names)}{suffix}"
    path.write_bytes(data)
    return path


def _expect_clean_failure_or_success(engine, function, path, fmt) -> None:
    """Either the import works, or it raises the one-line error and changes nothing."""
    before = counts(engine)
    try:
        summary = run_import(engine, function, path, format=fmt)
    except ImportFormatError as exc:
        message = str(exc)
        assert "\n" not in message, message
        assert message.startswith(str(path)), message
        assert counts(engine) == before
    else:
        after = counts(engine)
        assert after["prompt"] - before["prompt"] == summary.added["prompts"]
        assert after["response"] - before["response"] == summary.added["responses"]
        assert after["judgment"] - before["judgment"] == summary.added["judgments"]


# ------------------------------------------------------------------ strategies

text = (st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=30)
        .map(lambda s: unicodedata.normalize("NFC", s).strip()).filter(bool))


@st.composite
def conversations(draw):
    system = draw(st.none() | text)
    exchanges = draw(st.integers(1, 3))
    messages = []
    for _ in range(exchanges):
        messages += [{"role": "user", "content": draw(text)}, {"role": "assistant", "content": draw(text)}]
    return system, messages


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_keys = st.sampled_from(["messages", "role", "content", "prompt", "chosen", "rejected", "margin", "type",
                             "user", "assistant", "system"]) | st.text(max_size=6)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(json_keys, inner, max_size=4), max_leaves=12)


# ------------------------------------------------------------------ round trips

@PROPERTY
@given(st.lists(conversations(), min_size=1, max_size=6))
def test_openai_jsonl_round_trip(db, chats):
    engine, folder = db
    _wipe(engine)
    lines = []
    for system, messages in chats:
        full = ([{"role": "system", "content": system}] if system else []) + messages
        lines.append(json.dumps({"messages": full}))
    path = _file(folder, ".jsonl", ("\n".join(lines) + "\n").encode())
    run_import(engine, import_prompts, path)
    with Session(engine) as session:
        stored = set()
        for response in session.exec(select(Response)):
            prompt = session.get(Prompt, response.prompt_id)
            assert prompt.source == f"openai-jsonl:{path.stem}"
            stored.add((prompt.system_prompt, json.dumps(prompt.messages), response.text))
    expected = {(system, json.dumps(messages[:-1]), messages[-1]["content"]) for system, messages in chats}
    assert stored == expected


@PROPERTY
@given(st.lists(st.tuples(text, text, text), min_size=1, max_size=6, unique_by=lambda t: normalize_text(t[0])),
       st.booleans())
def test_trl_preferences_round_trip(db, pairs, conversational):
    engine, folder = db
    _wipe(engine)
    records = []
    for prompt, chosen, rejected in pairs:
        if conversational:
            records.append({"prompt": [{"role": "user", "content": prompt}],
                            "chosen": [{"role": "assistant", "content": chosen}],
                            "rejected": [{"role": "assistant", "content": rejected}]})
        else:
            records.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    path = _file(folder, ".jsonl", "".join(json.dumps(r) + "\n" for r in records).encode())
    summary = run_import(engine, import_preferences, path, format="trl", dataset="props")
    with Session(engine) as session:
        stored = set()
        for judgment in session.exec(select(Judgment)):
            comparison = session.get(Comparison, judgment.comparison_id)
            a, b = session.get(Response, comparison.response_a_id), session.get(Response, comparison.response_b_id)
            chosen, rejected = (a, b) if judgment.preferred == "a" else (b, a)
            prompt = session.get(Prompt, comparison.prompt_id)
            stored.add((prompt.messages[0]["content"], chosen.text, rejected.text))
    expected = {(p, c, r) for p, c, r in pairs if normalize_text(c) != normalize_text(r)}
    assert stored == expected
    assert summary.skipped.get("chosen equals rejected", 0) == len(pairs) - len(expected)


# ------------------------------------------------------------------ bad input

@PROPERTY
@given(st.binary(max_size=1500), st.sampled_from(PROMPT_FORMATS + PREFERENCE_FORMATS))
def test_arbitrary_bytes_give_one_line_error_or_import(db, data, fmt):
    engine, folder = db
    suffix = {"counselchat": ".csv", "counselchat-upvotes": ".csv", "dialogflow": ".zip", "plaintext": ".txt"}
    path = _file(folder, suffix.get(fmt, ".jsonl"), data)
    function = import_prompts if fmt in PROMPT_FORMATS else import_preferences
    if fmt == "plaintext":
        _expect_clean_failure_or_success(engine, function, path, fmt)
        return
    before = counts(engine)
    with pytest.raises(ImportFormatError) as caught:
        run_import(engine, function, path, format=fmt)
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith(str(path))
    assert counts(engine) == before


@PROPERTY
@given(st.lists(json_values, min_size=1, max_size=4), st.sampled_from(["openai-jsonl", "trl", "hh-rlhf"]))
def test_malformed_records_give_one_line_error_or_import(db, records, fmt):
    engine, folder = db
    path = _file(folder, ".jsonl", "".join(json.dumps(r) + "\n" for r in records).encode())
    function = import_prompts if fmt == "openai-jsonl" else import_preferences
    _expect_clean_failure_or_success(engine, function, path, fmt)


VALID = {
    "openai-jsonl": {"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "I'm low."},
                                  {"role": "assistant", "content": "I'm here with you."}]},
    "trl": {"prompt": "I'm low.", "chosen": "I'm here with you.", "rejected": "Cheer up.", "margin": 1},
    "hh-rlhf": {"chosen": "\n\nHuman: I'm low.\n\nAssistant: I'm here.",
                "rejected": "\n\nHuman: I'm low.\n\nAssistant: Cheer up."},
}


@PROPERTY
@given(st.sampled_from(sorted(VALID)), st.data())
def test_truncated_or_mutated_valid_record_is_rejected(db, fmt, data):
    """After one good line, a truncated or type-broken copy of a valid record always fails cleanly
    on line 2, and the good line is rolled back with it."""
    engine, folder = db
    good = json.dumps(VALID[fmt])
    record = json.loads(good)
    if data.draw(st.booleans(), label="truncate"):
        cut = data.draw(st.integers(1, len(good) - 1), label="cut")
        bad = good[:cut]
    else:
        key = data.draw(st.sampled_from(sorted(k for k in record if k != "margin")), label="key")
        record[key] = data.draw(st.none() | st.integers() | st.lists(st.integers(), max_size=2)
                                | st.sampled_from(["", " "]), label="value")
        bad = json.dumps(record)
    path = _file(folder, ".jsonl", f"{good}\n{bad}\n".encode())
    function = import_prompts if fmt == "openai-jsonl" else import_preferences
    _wipe(engine)
    before = counts(engine)
    with pytest.raises(ImportFormatError) as caught:
        run_import(engine, function, path, format=fmt)
    message = str(caught.value)
    assert message.startswith(f"{path}, line 2: "), message
    assert "\n" not in message, message
    assert counts(engine) == before


@PROPERTY
@given(st.lists(text, min_size=1, max_size=3), text, text)
def test_hh_rlhf_round_trip(db, context, chosen, rejected):
    for piece in (*context, chosen, rejected):
        assume("\n\nHuman:" not in piece and "\n\nAssistant:" not in piece)
    engine, folder = db
    _wipe(engine)
    turns = []
    for index, piece in enumerate(context):
        turns.append(("Human", piece))
        if index < len(context) - 1:
            turns.append(("Assistant", f"reply {index}"))
    head = "".join(f"\n\nHuman: {body}" if role == "Human" else f"\n\nAssistant: {body}" for role, body in turns)
    record = {"chosen": f"{head}\n\nAssistant: {chosen}", "rejected": f"{head}\n\nAssistant: {rejected}"}
    path = _file(folder, ".jsonl", (json.dumps(record) + "\n").encode())
    summary = run_import(engine, import_preferences, path, format="hh-rlhf")
    if normalize_text(chosen) == normalize_text(rejected):
        assert summary.skipped == {"chosen equals rejected": 1}
        return
    with Session(engine) as session:
        judgment = session.exec(select(Judgment)).one()
        comparison = session.get(Comparison, judgment.comparison_id)
        a, b = session.get(Response, comparison.response_a_id), session.get(Response, comparison.response_b_id)
        got_chosen, got_rejected = (a, b) if judgment.preferred == "a" else (b, a)
        prompt = session.get(Prompt, comparison.prompt_id)
    expected = [{"role": "user" if role == "Human" else "assistant", "content": body} for role, body in turns]
    assert prompt.messages == expected
    assert (got_chosen.text, got_rejected.text) == (chosen, rejected)


csv_cells = st.text(st.characters(exclude_categories=("Cs",)), max_size=12) | st.integers(-3, 30).map(str)


@PROPERTY
@given(st.lists(st.lists(csv_cells, min_size=6, max_size=6), min_size=0, max_size=5),
       st.sampled_from(["counselchat", "counselchat-upvotes"]))
def test_counselchat_random_rows_give_one_line_error_or_import(db, rows, fmt):
    engine, folder = db
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["questionID", "questionTitle", "questionText", "topic", "answerText", "upvotes"])
    writer.writerows(rows)
    path = _file(folder, ".csv", buffer.getvalue().encode("utf-8", "surrogatepass"))
    function = import_prompts if fmt == "counselchat" else import_preferences
    _expect_clean_failure_or_success(engine, function, path, fmt)


@PROPERTY
@given(st.dictionaries(st.sampled_from(["agent.json", "intents/A.json", "intents/A_usersays_en.json",
                                        "intents/B_usersays_en.json", "../x.json", "/abs.json"]),
                       json_values, min_size=1, max_size=4))
def test_dialogflow_random_zips_give_one_line_error_or_import(db, entries):
    engine, folder = db
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, value in entries.items():
            archive.writestr(zipfile.ZipInfo(name), json.dumps(value))
    path = _file(folder, ".zip", buffer.getvalue())
    if any(name.startswith(("../", "/")) for name in entries):  # never read, still refused: the file is hostile
        before = counts(engine)
        with pytest.raises(ImportFormatError, match="points outside the archive"):
            run_import(engine, import_prompts, path, format="dialogflow")
        assert counts(engine) == before
        return
    _expect_clean_failure_or_success(engine, import_prompts, path, "dialogflow")
