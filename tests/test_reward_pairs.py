"""Pair building (pure functions) and reading pairs from a real database and real files."""

from __future__ import annotations

import json

import pytest

from db.crud import add_judgment, get_or_create_source_annotator
from reward.data import pairs_from_db, read_preference_file
from reward.errors import RewardError
from reward.pairs import Vote, build_pairs, parse_margin_mapping, split_by_prompt
from tests.factories import build_project

P = (("system", "Be kind."), ("user", "I can't sleep."))


def vote(cid: int, preferred: str, **kw) -> Vote:
    base = dict(comparison_id=cid, prompt_key=f"p{cid}", prompt=P, text_a=f"reply A{cid}", text_b=f"reply B{cid}",
                preferred=preferred, response_a_id=cid * 10, response_b_id=cid * 10 + 1, annotator="c1")
    base.update(kw)
    return Vote(**base)


def test_ties_and_both_bad_are_counted_not_paired():
    pairs, stats = build_pairs([vote(1, "tie"), vote(2, "both_bad"), vote(3, "b")])
    assert [(p.chosen, p.rejected) for p in pairs] == [("reply B3", "reply A3")]
    assert (stats.ties, stats.both_bad, stats.pairs, stats.votes) == (1, 1, 1, 3)
    assert pairs[0].messages[0] == {"role": "system", "content": "Be kind."}


def test_reply_flagged_unsafe_by_any_clinician_is_never_chosen():
    votes = [vote(1, "a", annotator="c1"), vote(1, "b", annotator="c2", flags_a=("harmful_advice",)),
             vote(2, "a", annotator="c1")]
    pairs, stats = build_pairs(votes)
    # A1 was flagged by c2, so c1's vote for A1 is dropped; c2's vote (B1 over A1) stays.
    assert all(p.chosen != "reply A1" for p in pairs)
    assert ("reply B1", "reply A1") in [(p.chosen, p.rejected) for p in pairs]
    assert stats.unsafe_chosen == 1
    assert stats.pairs == 2
    # the same reply flagged in another comparison still counts (identified by response id)
    pairs, stats = build_pairs([vote(1, "a"), vote(9, "a", response_a_id=10, text_a="reply A1"),
                                vote(5, "a", response_b_id=10, text_b="reply A1", flags_b=("toxic",))])
    assert [p.comparison_id for p in pairs] == [5]
    assert stats.unsafe_chosen == 2
    # flags set by an imported source are not a clinician's judgment
    pairs, stats = build_pairs([vote(1, "a", role="source", annotator="import:x", flags_a=("toxic",))])
    assert len(pairs) == 1
    assert stats.unsafe_chosen == 0


def test_margins_off_by_default_and_mapped_when_asked():
    votes = [vote(1, "a", strength=3), vote(2, "b", strength=1)]
    assert [p.margin for p in build_pairs(votes)[0]] == [0.0, 0.0]
    mapping = parse_margin_mapping("1:0,2:0.5,3:1")
    assert [p.margin for p in build_pairs(votes, margin_mapping=mapping)[0]] == [1.0, 0.0]
    with pytest.raises(RewardError, match="margin mapping"):
        parse_margin_mapping("3")


def test_majority_needs_a_strict_winner():
    votes = [vote(1, "a", annotator="x"), vote(1, "a", annotator="y"), vote(1, "b", annotator="z"),
             vote(2, "a", annotator="x"), vote(2, "b", annotator="y"),
             vote(3, "a", annotator="x"), vote(3, "tie", annotator="y"), vote(3, "both_bad", annotator="z"),
             vote(4, "b", annotator="x"), vote(4, "tie", annotator="y")]
    pairs, stats = build_pairs(votes, aggregation="majority")
    assert [(p.comparison_id, p.chosen) for p in pairs] == [(1, "reply A1")]
    assert stats.no_majority == 3
    per_judgment, _ = build_pairs(votes)
    assert len(per_judgment) == 7


def test_source_and_guideline_filters():
    votes = [vote(1, "a", guideline_version=1), vote(2, "a", guideline_version=2),
             vote(3, "b", role="source", annotator="import:hh-rlhf", guideline_version=2)]
    assert [p.source for p in build_pairs(votes, sources="clinicians")[0]] == ["clinicians", "clinicians"]
    assert [p.source for p in build_pairs(votes, sources="imported")[0]] == ["import:hh-rlhf"]
    assert len(build_pairs(votes, sources="both")[0]) == 3
    pairs, stats = build_pairs(votes, sources="both", guideline_versions=[2])
    assert [p.comparison_id for p in pairs] == [2, 3]
    assert stats.filtered_guideline == 1
    with pytest.raises(RewardError, match="aggregation"):
        build_pairs(votes, aggregation="mean")


def test_split_is_by_prompt_and_seeded():
    votes = [vote(i, "a", prompt_key=f"p{i % 7}", annotator=f"c{j}") for i in range(30) for j in range(2)]
    pairs, _ = build_pairs(votes)
    train, held = split_by_prompt(pairs, eval_fraction=0.3, seed=3)
    assert held
    assert train
    assert len(train) + len(held) == len(pairs)
    assert not {p.prompt_key for p in train} & {p.prompt_key for p in held}
    assert split_by_prompt(pairs, eval_fraction=0.3, seed=3) == (train, held)
    assert split_by_prompt(pairs, eval_fraction=0.3, seed=4) != (train, held)


def test_pairs_from_a_real_database(session):
    project = build_project(session, n_prompts=4, n_clinicians=2, with_judgments=True)
    comparison = project.comparisons[0]
    source = get_or_create_source_annotator("hh-rlhf", session=session)
    add_judgment(comparison, source, "a", session=session, rationale="imported from hh-rlhf (x line 1)",
                 margin=2.5)
    session.commit()
    pairs, stats = pairs_from_db(session=session)
    assert len(pairs) == 8
    assert stats.pairs == 8
    assert {p.source for p in pairs} == {"clinicians"}
    assert all(p.chosen.startswith("That sounds really hard") and p.rejected == "Okay." for p in pairs)
    assert pairs[0].prompt[0] == ("system", "You are a warm, careful therapy assistant.")
    assert all(p.prompt_key.startswith("prompt:") for p in pairs)
    imported, _ = pairs_from_db(session=session, sources="imported", margin_mapping={})
    assert len(imported) == 1
    assert imported[0].margin == 2.5
    assert imported[0].source == "import:hh-rlhf"
    strength, _ = pairs_from_db(session=session, margin_mapping=parse_margin_mapping("linear"))
    assert {p.margin for p in strength} == {0.5}


def test_preference_files_in_every_import_format(tmp_path, shared_data):
    """Files are read by the importers (``db.importers``), under their format names."""
    trl = tmp_path / "prefs.jsonl"
    trl.write_text(json.dumps({"prompt": [{"role": "user", "content": "I feel low"}],
                               "chosen": [{"role": "assistant", "content": "I'm sorry. What happened?"}],
                               "rejected": [{"role": "assistant", "content": "Cheer up."}]}) + "\n"
                   + json.dumps({"prompt": "Can't sleep", "chosen": "Tell me more", "rejected": "ok"}) + "\n")
    pairs = read_preference_file(trl)
    expected = [("I'm sorry. What happened?", "Cheer up."), ("Tell me more", "ok")]
    assert [(p.chosen, p.rejected) for p in pairs] == expected
    assert read_preference_file(trl, format="trl")[0].chosen == "I'm sorry. What happened?"
    hh = tmp_path / "hh.jsonl"
    hh.write_text(json.dumps({"chosen": "\n\nHuman: hi\n\nAssistant: Hello, how are you?",
                              "rejected": "\n\nHuman: hi\n\nAssistant: go away"}) + "\n")
    named = read_preference_file(hh, format="hh-rlhf")
    assert [(p.prompt, p.chosen) for p in named] == [((("user", "hi"),), "Hello, how are you?")]
    assert read_preference_file(hh)[0].rejected == "go away"
    cc = read_preference_file(shared_data / "counsel_chat.csv", format="counselchat-upvotes")
    assert len(cc) > 1500
    assert len({p.prompt_key for p in cc}) > 150
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x", "chosen": "y", "rejected": "z"}) + "\n{not json\n")
    with pytest.raises(RewardError, match=r"bad.jsonl, line 2"):
        read_preference_file(bad)
    with pytest.raises(RewardError, match="'openai-jsonl' is not a preferences format"):
        read_preference_file(bad, format="openai-jsonl")


def test_counselchat_upvote_margin_can_be_turned_off(shared_data):
    with_margin = read_preference_file(shared_data / "counsel_chat.csv")
    plain = read_preference_file(shared_data / "counsel_chat.csv", margins=False)
    assert {p.margin for p in plain} == {0.0}
    assert [(p.prompt_key, p.chosen, p.rejected) for p in with_margin] == [
        (p.prompt_key, p.chosen, p.rejected) for p in plain]
    margins = {p.margin for p in with_margin}
    assert min(margins) == 1.0
    assert max(margins) > 1.0
    assert all(m == int(m) for m in margins)
