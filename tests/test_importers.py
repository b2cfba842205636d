"""Importers on the three shared files (exact counts computed independently from the files), on
preference files written here, and on bad input (one-line error, database unchanged)."""

from __future__ import annotations

import gzip
import json
import zipfile

import pytest
from sqlmodel import Session, select

from db.engine import make_engine
from db.importers import (
    ImportFormatError,
    detect_format,
    import_preferences,
    import_prompts,
    iter_counselchat_rows,
)
from db.migrate import upgrade
from db.models import Annotator, CandidateModel, Comparison, Judgment, Prompt, Response
from tests.conftest import COUNSEL_CHAT, DIALOGFLOW, GABY
from tests.importers_helpers import (
    AGENT,
    INTENT,
    PHRASES,
    counselchat_questions,
    counts,
    expected_counselchat,
    expected_dialogflow,
    expected_gaby,
    hh,
    run_import,
    write_jsonl,
    write_zip,
)


def _by_candidate(session: Session, name: str) -> list[Response]:
    candidate = session.exec(select(CandidateModel).where(CandidateModel.name == name)).one()
    return list(session.exec(select(Response).where(Response.candidate_model_id == candidate.id)))


def test_shared_files_exact_counts_and_reimport(any_engine):
    gaby_prompts, gaby_replies = expected_gaby(GABY)
    cc_prompts, cc_replies, cc_rows, _ = expected_counselchat(COUNSEL_CHAT)
    agent, df_prompts, df_replies = expected_dialogflow(DIALOGFLOW)

    gaby = run_import(any_engine, import_prompts, GABY)
    assert (gaby.format, gaby.records) == ("openai-jsonl", 40)
    assert gaby.added == {"prompts": gaby_prompts, "responses": gaby_replies}
    cc = run_import(any_engine, import_prompts, COUNSEL_CHAT)
    assert (cc.format, cc.records) == ("counselchat", cc_rows)
    assert cc.added == {"prompts": cc_prompts, "responses": cc_replies}
    df = run_import(any_engine, import_prompts, DIALOGFLOW)
    assert df.format == "dialogflow"
    assert df.added == {"prompts": df_prompts, "responses": df_replies}

    before = counts(any_engine)
    assert before["prompt"] == gaby_prompts + cc_prompts + df_prompts
    assert before["response"] == gaby_replies + cc_replies + df_replies
    for path in (GABY, COUNSEL_CHAT, DIALOGFLOW):
        again = run_import(any_engine, import_prompts, path)
        assert sum(again.added.values()) == 0, again.line()
        assert "added 0;" in again.line()
    assert counts(any_engine) == before

    with Session(any_engine) as session:
        gaby_rows = session.exec(select(Prompt).where(Prompt.source == "openai-jsonl:gaby_sft_sample")).all()
        assert len(gaby_rows) == gaby_prompts
        assert all(p.system_prompt.startswith("Gaby") for p in gaby_rows)
        assert all(m["role"] != "system" for p in gaby_rows for m in p.messages)
        reference = session.exec(select(CandidateModel).where(CandidateModel.name == "reference")).one()
        assert reference.provider == "reference"
        first = json.loads(GABY.read_text().splitlines()[0])["messages"]
        prompt = next(p for p in gaby_rows if p.messages == [first[1]])
        replies = [r.text for r in _by_candidate(session, "reference") if r.prompt_id == prompt.id]
        assert first[2]["content"] in replies

        answers = _by_candidate(session, "counselchat")
        assert len(answers) == cc_replies
        assert not any("\u00a0" in r.text for r in answers)
        assert all(isinstance(r.meta["upvotes"], int) and "therapistInfo" in r.meta for r in answers)
        cc_rows_db = session.exec(select(Prompt).where(Prompt.source == "counselchat")).all()
        assert all(p.topic and p.external_id for p in cc_rows_db)
        assert max(len(p.tags) for p in cc_rows_db) == 2  # a question listed under two topics

        bot = session.exec(select(CandidateModel).where(CandidateModel.name == f"dialogflow:{agent}")).one()
        assert bot.provider == "dialogflow"
        sad = session.exec(select(Prompt).where(Prompt.topic == "Sad")).one()
        assert sad.messages == [{"role": "user", "content": "I'm feeling very sad"}]
        assert len([r for r in _by_candidate(session, bot.name) if r.prompt_id == sad.id]) == 3


def test_error_rolls_back_everything(any_engine, tmp_path):
    run_import(any_engine, import_prompts, GABY)
    before = counts(any_engine)
    lines = GABY.read_text().splitlines()[:5]
    bad = tmp_path / "partly.jsonl"
    bad.write_text("\n".join([lines[0].replace("What", "Brand new question: what"), *lines[1:], '{"messages": ['])
                   + "\n")
    with pytest.raises(ImportFormatError, match=r"partly.jsonl, line 6: invalid JSON"):
        run_import(any_engine, import_prompts, bad)
    assert counts(any_engine) == before
    # PostgreSQL cannot store NUL characters: refused up front with a located error, not a driver error
    nul = write_jsonl(tmp_path / "nul.jsonl", [{"prompt": "ok", "chosen": "fine", "rejected": "also fine"},
                                               {"prompt": "a\u0000b", "chosen": "c", "rejected": "d"}])
    with pytest.raises(ImportFormatError, match=r"nul.jsonl, line 2: prompt contains a NUL character"):
        run_import(any_engine, import_preferences, nul)
    assert counts(any_engine) == before


def test_counselchat_upvote_preferences(engine):
    *_, rows, pairs = expected_counselchat(COUNSEL_CHAT)
    summary = run_import(engine, import_preferences, COUNSEL_CHAT)
    assert summary.format == "counselchat-upvotes"
    assert summary.records == rows
    assert summary.added["comparisons"] == summary.added["judgments"] == pairs
    with Session(engine) as session:
        source = session.exec(select(Annotator).where(Annotator.username == "import:counselchat-upvotes")).one()
        assert source.role == "source"
        assert source.password_hash is None
        judgments = session.exec(select(Judgment)).all()
        assert len(judgments) == pairs
        assert {j.annotator_id for j in judgments} == {source.id}
        for judgment in judgments[:300]:
            comparison = session.get(Comparison, judgment.comparison_id)
            a, b = session.get(Response, comparison.response_a_id), session.get(Response, comparison.response_b_id)
            chosen, rejected = (a, b) if judgment.preferred == "a" else (b, a)
            diff = chosen.meta["upvotes"] - rejected.meta["upvotes"]
            assert diff > 0
            assert judgment.margin == diff
            assert judgment.strength == min(diff, 3)
            assert judgment.rationale == (f"imported from counselchat-upvotes ({COUNSEL_CHAT.name} rows "
                                          f"{chosen.meta['row']} > {rejected.meta['row']})")
    before = counts(engine)
    again = run_import(engine, import_preferences, COUNSEL_CHAT, format="counselchat-upvotes")
    assert sum(again.added.values()) == 0
    assert counts(engine) == before


def test_iter_counselchat_rows_cleans_text():
    rows = list(iter_counselchat_rows(COUNSEL_CHAT))
    assert len(rows) == expected_counselchat(COUNSEL_CHAT)[2]
    assert not any("\u00a0" in r.answer or "\u00a0" in r.question for r in rows)
    assert all(isinstance(r.upvotes, int) and r.questionID for r in rows)
    assert len({r.question for r in rows}) == len(counselchat_questions(COUNSEL_CHAT))
    assert "with.Seriously" not in rows[0].answer
    assert "with. Seriously" in rows[0].answer


def test_trl_preferences_standard_conversational_implicit(engine, tmp_path):
    system = {"role": "system", "content": "You are a careful therapist."}
    user = {"role": "user", "content": "I can't sleep."}
    records = [
        {"prompt": "I feel anxious.", "chosen": "That sounds hard. What happens?", "rejected": "Relax.",
         "margin": 2.5},
        {"prompt": [system, user], "chosen": [{"role": "assistant", "content": "Tell me about your nights."}],
         "rejected": [{"role": "assistant", "content": "Take pills."}]},
        {"chosen": [user, {"role": "assistant", "content": "Since when?"}],
         "rejected": [user, {"role": "assistant", "content": "Whatever."}]},
        # the earlier chosen reply is now rejected: it has the lower id, so preferred must be "b"
        {"prompt": "I feel anxious.", "chosen": "Let's breathe together first.",
         "rejected": "That sounds hard. What happens?", "margin": -0.5},
        {"prompt": "Same?", "chosen": "Same.", "rejected": " Same. "},
    ]
    path = write_jsonl(tmp_path / "my-prefs.jsonl", records)
    assert detect_format(path, kind="preferences") == "trl"
    summary = run_import(engine, import_preferences, path)
    assert summary.dataset == "my-prefs"
    assert summary.added["comparisons"] == 4
    assert summary.added["judgments"] == 4
    assert summary.skipped == {"chosen equals rejected": 1}
    with Session(engine) as session:
        judgments = session.exec(select(Judgment).order_by(Judgment.id)).all()
        assert [j.preferred for j in judgments] == ["a", "a", "a", "b"]
        assert [j.margin for j in judgments] == [2.5, None, None, -0.5]  # its own column
        assert [j.rationale for j in judgments] == [  # where it came from, nothing else
            f"imported from my-prefs (my-prefs.jsonl line {n})" for n in (1, 2, 3, 4)]
        for judgment in judgments:
            comparison = session.get(Comparison, judgment.comparison_id)
            chosen_id = comparison.response_a_id if judgment.preferred == "a" else comparison.response_b_id
            assert session.get(Response, chosen_id).text in {
                "That sounds hard. What happens?", "Tell me about your nights.", "Since when?",
                "Let's breathe together first."}
        conversational = session.exec(select(Prompt).where(Prompt.system_prompt == system["content"])).one()
        assert conversational.messages == [user]
        assert conversational.source == "my-prefs"
        candidate = session.exec(select(CandidateModel).where(CandidateModel.name == "my-prefs")).one()
        assert candidate.provider == "imported"
    before = counts(engine)
    assert sum(run_import(engine, import_preferences, path).added.values()) == 0
    assert counts(engine) == before


def test_reward_pairs_from_imported_judgments_carry_the_margin(any_engine, tmp_path):
    """The dataset's margin travels importer -> ``Judgment.margin`` -> reward pair, with the
    rationale left to say where the judgment came from."""
    from reward.data import pairs_from_db

    path = write_jsonl(tmp_path / "prefs.jsonl", [
        {"prompt": "I feel anxious.", "chosen": "That sounds hard. What happens?", "rejected": "Relax.",
         "margin": 1.75},
        {"prompt": "I can't sleep.", "chosen": "Since when?", "rejected": "Whatever."},
    ])
    run_import(any_engine, import_preferences, path)
    with Session(any_engine) as session:
        stored = session.exec(select(Judgment.margin, Judgment.rationale).order_by(Judgment.id)).all()
        assert stored == [(1.75, "imported from prefs (prefs.jsonl line 1)"),
                          (None, "imported from prefs (prefs.jsonl line 2)")]
        pairs, _ = pairs_from_db(session=session, sources="imported", margin_mapping={})
    assert [(p.chosen, p.margin, p.source) for p in pairs] == [
        ("That sounds hard. What happens?", 1.75, "import:prefs"), ("Since when?", 0.0, "import:prefs")]


def test_hh_rlhf_gz_and_plain(engine, tmp_path):
    records = [
        {"chosen": hh("Hi, I'm stressed.", "What's going on?", "Exams.", "That's a lot; let's plan."),
         "rejected": hh("Hi, I'm stressed.", "What's going on?", "Exams.", "Just study.")},
        {"chosen": hh("Help", "Sure."), "rejected": hh("Help", "Sure.")},
        {"chosen": hh("A", "B"), "rejected": hh("C", "D")},
        {"chosen": hh("Hello", ""), "rejected": hh("Hello", "Hi")},
    ]
    path = write_jsonl(tmp_path / "hh.jsonl.gz", records, gz=True)
    assert detect_format(path, kind="preferences") == "hh-rlhf"
    summary = run_import(engine, import_preferences, path)
    assert summary.dataset == "hh-rlhf"
    assert summary.records == 4
    assert summary.added["judgments"] == 1
    assert summary.skipped == {"chosen equals rejected": 1, "chosen and rejected contexts differ": 1,
                               "empty final reply": 1}
    with Session(engine) as session:
        prompt = session.exec(select(Prompt).where(Prompt.source == "hh-rlhf")).one()
        assert prompt.messages == [{"role": "user", "content": "Hi, I'm stressed."},
                                   {"role": "assistant", "content": "What's going on?"},
                                   {"role": "user", "content": "Exams."}]
        judgment = session.exec(select(Judgment)).one()
        comparison = session.get(Comparison, judgment.comparison_id)
        chosen = comparison.response_a_id if judgment.preferred == "a" else comparison.response_b_id
        assert session.get(Response, chosen).text == "That's a lot; let's plan."
    plain = write_jsonl(tmp_path / "hh.jsonl", records)
    before = counts(engine)
    assert sum(run_import(engine, import_preferences, plain, format="hh-rlhf").added.values()) == 0
    assert counts(engine) == before


def test_plaintext_and_detection(engine, tmp_path):
    path = tmp_path / "messages.txt"
    path.write_text("I feel low.\n\n   \nMy boss yells at me.\nI feel low.\n", encoding="utf-8")
    summary = run_import(engine, import_prompts, path)
    assert summary.format == "plaintext"
    assert summary.records == 3
    assert summary.added == {"prompts": 2}
    assert summary.repeated == {"prompts": 1}
    assert detect_format(GABY) == "openai-jsonl"
    assert detect_format(DIALOGFLOW) == "dialogflow"
    assert detect_format(COUNSEL_CHAT) == "counselchat"
    assert detect_format(COUNSEL_CHAT, kind="preferences") == "counselchat-upvotes"


def _five_mb_line() -> bytes:
    return b'{"messages": [{"role": "user", "content": "' + b"a" * 5_000_000 + b'"}]}\n'


CC_HEADER = "questionID,questionTitle,questionText,topic,answerText,upvotes\n"
GOOD_TRL = json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"}) + "\n"

BAD_INPUTS = [
    # (id, importer, file name, content, format, expected message fragment)
    ("jsonl-truncated", "prompts", "x.jsonl", b'{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": [{"ro',
     None, "line 2: invalid JSON"),
    ("jsonl-wrong-role", "prompts", "x.jsonl", b'{"messages": [{"role": "bot", "content": "hi"}]}\n', None,
     "line 1: message 1 has role 'bot'"),
    ("jsonl-missing-key", "prompts", "x.jsonl", b'{"conversation": []}\n', "openai-jsonl", "line 1: no 'messages'"),
    ("jsonl-empty", "prompts", "x.jsonl", b"", "openai-jsonl", "empty"),
    ("jsonl-not-utf8", "prompts", "x.jsonl", b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n',
     "openai-jsonl", "line 1: not valid UTF-8"),
    ("jsonl-5mb-line", "prompts", "x.jsonl", _five_mb_line(), "openai-jsonl", "line 1: line is longer"),
    ("jsonl-two-replies", "prompts", "x.jsonl",
     b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"},'
     b' {"role": "assistant", "content": "b"}]}\n', "openai-jsonl", "one assistant reply"),
    ("csv-missing-columns", "prompts", "x.csv", b"questionID,questionTitle,questionText\n1,a,b\n", None,
     "line 1: missing column(s) answerText"),
    ("csv-empty", "prompts", "x.csv", b"", None, "empty"),
    ("csv-not-utf8", "prompts", "x.csv", (CC_HEADER + "1,t,q,x,ans\xff,1\n").encode("latin-1"), None,
     "line 2: not valid UTF-8"),
    ("csv-ragged", "prompts", "x.csv", (CC_HEADER + "1,t,q,x\n").encode(), None, "line 2: row 1 has 4 fields"),
    ("csv-5mb-line", "prompts", "x.csv", (CC_HEADER + "1,t," + "q" * 5_000_000 + ",x,a,1\n").encode(), None,
     "line 2: line is longer"),
    ("csv-bad-upvotes", "preferences", "x.csv", (CC_HEADER + "1,t,q,x,a,many\n").encode(), None,
     "line 2: upvotes 'many' is not a whole number"),
    ("csv-upvotes-missing-column", "preferences", "x.csv", b"questionID,questionTitle,questionText,answerText\n"
     b"1,a,b,c\n", None, "missing column(s) upvotes"),
    ("text-empty", "prompts", "x.txt", b"\n  \n", None, "empty"),
    ("text-not-utf8", "prompts", "x.txt", b"fine\n\xc3\x28 broken\n", None, "line 2: not valid UTF-8"),
    ("text-5mb-line", "prompts", "x.txt", b"b" * 5_000_000, None, "line 1: line is longer"),
    ("zip-no-agent", "prompts", "x.zip", None, None, "no agent.json"),
    ("zip-dotdot", "prompts", "x.zip", None, None, "entry ../evil.json: entry points outside"),
    ("zip-absolute", "prompts", "x.zip", None, None, "entry /etc/cron.d/x: entry points outside"),
    ("zip-not-a-zip", "prompts", "x.zip", b"PK\x03\x04 garbage", None, "not a readable zip"),
    ("zip-bomb", "prompts", "x.zip", None, None, "entry intents/Sad_usersays_en.json: entry is larger than"),
    ("zip-bad-json", "prompts", "x.zip", None, None, "entry intents/Sad_usersays_en.json, line 1: invalid JSON"),
    ("trl-missing-columns", "preferences", "x.jsonl", b'{"prompt": "p", "chosen": "c"}\n', "trl",
     "line 1: missing field(s) rejected"),
    ("trl-wrong-roles", "preferences", "x.jsonl",
     json.dumps({"prompt": [{"role": "user", "content": "p"}], "chosen": [{"role": "user", "content": "c"}],
                 "rejected": [{"role": "assistant", "content": "r"}]}).encode() + b"\n", "trl",
     "chosen must be a string or exactly one assistant message"),
    ("trl-truncated", "preferences", "x.jsonl", (GOOD_TRL + GOOD_TRL[:20]).encode(), "trl", "line 2: invalid JSON"),
    ("trl-bad-margin", "preferences", "x.jsonl",
     b'{"prompt": "p", "chosen": "c", "rejected": "r", "margin": "high"}\n', "trl", "margin must be a finite"),
    ("trl-empty", "preferences", "x.jsonl", b"", "trl", "empty"),
    ("trl-not-utf8", "preferences", "x.jsonl", GOOD_TRL.encode() + b'{"prompt": "\xfe"}\n', "trl",
     "line 2: not valid UTF-8"),
    ("trl-5mb-line", "preferences", "x.jsonl", GOOD_TRL.encode() + b'{"prompt": "' + b"p" * 5_000_000 + b'"}',
     "trl", "line 2: line is longer"),
    ("hh-no-turns", "preferences", "x.jsonl", b'{"chosen": "hello", "rejected": "bye"}\n', "hh-rlhf",
     "line 1: chosen: no"),
    ("hh-wrong-roles", "preferences", "x.jsonl",
     json.dumps({"chosen": hh("a", "b", "c"), "rejected": hh("a", "b", "d")}).encode() + b"\n", "hh-rlhf",
     "last turn must be an Assistant reply"),
    ("hh-bad-gzip", "preferences", "x.jsonl.gz", gzip.compress(GOOD_TRL.encode() * 50)[:30], "hh-rlhf",
     "cannot read the file"),
]


def _zip_content(case: str, path):
    if case == "zip-no-agent":
        return write_zip(path, {"intents/Sad.json": INTENT, "intents/Sad_usersays_en.json": PHRASES})
    if case == "zip-dotdot":
        return write_zip(path, {"agent.json": AGENT, "intents/Sad_usersays_en.json": PHRASES, "../evil.json": "{}"})
    if case == "zip-bomb":  # 17 MB of zeros compress to a few kB
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("agent.json", AGENT)
            archive.writestr("intents/Sad_usersays_en.json", b"0" * 17_000_000)
        assert path.stat().st_size < 100_000
        return path
    if case == "zip-absolute":
        return write_zip(path, {"agent.json": AGENT, "/etc/cron.d/x": "* * * * * root true"})
    return write_zip(path, {"agent.json": AGENT, "intents/Sad.json": INTENT, "intents/Sad_usersays_en.json": "[{"})


@pytest.fixture(scope="module")
def loaded_engine(tmp_path_factory):
    """One migrated SQLite file holding the Gaby import: rows that bad imports must leave untouched."""
    engine = make_engine(tmp_path_factory.mktemp("bad") / "therapref.db")
    upgrade(engine)
    run_import(engine, import_prompts, GABY)
    yield engine
    engine.dispose()


@pytest.mark.parametrize("case,kind,name,content,fmt,expected", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_one_line_error_and_nothing_written(loaded_engine, tmp_path, case, kind, name, content, fmt,
                                                      expected):
    engine = loaded_engine
    before = counts(engine)
    assert before["prompt"] > 0
    path = tmp_path / name
    if content is None:
        _zip_content(case, path)
    else:
        path.write_bytes(content)
    function = import_prompts if kind == "prompts" else import_preferences
    with pytest.raises(ImportFormatError) as caught:
        run_import(engine, function, path, format=fmt)
    message = str(caught.value)
    assert "\n" not in message, message
    assert message.startswith(str(path)), message
    assert expected in message, message
    assert len(message) < 400
    assert counts(engine) == before


def test_dialogflow_limits_and_agent_name(engine, tmp_path):
    path = write_zip(tmp_path / "agent.zip", {"agent.json": AGENT, "intents/Sad.json": INTENT,
                                              "intents/Sad_usersays_en.json": PHRASES})
    summary = run_import(engine, import_prompts, path)
    assert summary.added == {"prompts": 1, "responses": 1}
    with Session(engine) as session:
        prompt = session.exec(select(Prompt).where(Prompt.source == "dialogflow:TestAgent")).one()
        assert prompt.messages[0]["content"] == "I feel sad"
        assert prompt.topic == "Sad"
        assert _by_candidate(session, "dialogflow:TestAgent")[0].text == "I hear you."


def test_wrong_kind_and_dataset_name(engine, tmp_path):
    with pytest.raises(ImportFormatError, match="is not a prompts format .*import preferences"):
        run_import(engine, import_prompts, GABY, format="hh-rlhf")
    with pytest.raises(ImportFormatError, match="dataset name"):
        run_import(engine, import_preferences, COUNSEL_CHAT, dataset="bad name!")
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"}])
    run_import(engine, import_prompts, GABY)
    with pytest.raises(ImportFormatError, match="already exists with provider 'reference'"):
        run_import(engine, import_preferences, path, dataset="reference")
