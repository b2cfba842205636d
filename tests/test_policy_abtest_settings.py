"""A/B tests that compare the model and nothing else (issue 23): NEW is generated with BASE's generation
settings, a mismatch is refused without ``--allow-different-settings``, the head-to-head puts the
length-controlled win rate beside the raw one and warns about a length gap, and a best-of-n candidate
has seen the prompts its reward model was trained on."""

from __future__ import annotations

import json
import re

import pytest
from sqlmodel import Session, func, select
from typer.testing import CliRunner

from analytics.head_to_head import Outcome, format_table, head_to_head, summarise
from db.crud import add_response, get_or_create_candidate
from db.models import AbTest, AuditEvent, CandidateModel, Comparison, PolicyRun, Response
from policy.abtest import AbTestError, GenerationSettings, create_abtest, trained_prompt_ids
from tests.factories import build_project
from therapref.cli import app

runner = CliRunner()
# What `therapref finetune local --register` leaves in params: the policy facts, no generation settings,
# so the registry's defaults apply (temperature 0.7, max_tokens 256).
POLICY = {"policy": {"model_dir": "/models/dpo1", "method": "dpo"}, "threads": 1}
# A base configured by hand with other settings (max_tokens small, to keep the test fast).
BASE = {"temperature": 1.0, "top_p": 1.0, "max_tokens": 8, "seed": None, "threads": 1}


def _project(engine, **kwargs):
    with Session(engine, expire_on_commit=False) as session:
        return build_project(session, **kwargs)


def _counts(engine) -> tuple[int, ...]:
    with Session(engine) as session:
        return tuple(session.exec(select(func.count(table.id))).one()
                     for table in (Comparison, AbTest, Response, CandidateModel, AuditEvent))


def _row(engine, name: str) -> CandidateModel:
    with Session(engine, expire_on_commit=False) as session:
        return session.exec(select(CandidateModel).where(CandidateModel.name == name)).one()


def _replies(engine, name: str) -> list[Response]:
    with Session(engine, expire_on_commit=False) as session:
        row = session.exec(select(CandidateModel).where(CandidateModel.name == name)).one()
        return list(session.exec(select(Response).where(Response.candidate_model_id == row.id)
                                 .order_by(Response.prompt_id)))


def _registered_policy_and_base(engine, project) -> list[int]:
    """A llama.cpp policy registered with the registry's defaults (its PolicyRun saw the first prompt) and
    a llama.cpp base with temperature 1.0 and max_tokens 8; returns the held-out prompt ids."""
    with Session(engine, expire_on_commit=False) as session:
        new, _ = get_or_create_candidate("dpo1", session=session, provider="llamacpp", model_id="embedded",
                                         params=dict(POLICY))
        get_or_create_candidate("base", session=session, provider="llamacpp", model_id="embedded", params=dict(BASE))
        session.add(PolicyRun(path="/models/dpo1", method="dpo", base_model="embedded", candidate_model_id=new.id,
                              provenance={"kind": "dpo", "prompt_ids": [project.prompts[0].id]}))
        session.commit()
    return [p.id for p in project.prompts[1:]]


def _one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


# --- NEW is generated with BASE's settings ----------------------------------------------------------------


def test_new_is_generated_with_the_base_settings_and_keeps_its_registration(engine, sqlite_url):
    """The acceptance test: a policy registered with the defaults (0.7, 256 tokens) against a base with
    temperature 1.0 and max_tokens 8: NEW's replies are generated with BASE's settings (at most 8
    tokens), both settings are printed, the AbTest row records them, and NEW's registration is untouched."""
    project = _project(engine, n_prompts=3, n_clinicians=1)
    held_out = _registered_policy_and_base(engine, project)
    result = runner.invoke(app, ["abtest", "dpo1", "--against", "base", "--db", sqlite_url, "--no-progress"])
    assert result.exit_code == 0, result.output
    replies = _replies(engine, "dpo1")
    assert [r.prompt_id for r in replies] == held_out
    for reply in replies:  # 256 tokens on today's code: the registry's default, not BASE's 8
        assert 0 < reply.meta["completion_tokens"] <= 8, reply.meta
        assert GenerationSettings.recorded(reply.meta) == GenerationSettings(1.0, 1.0, 8, None, None)
    base_replies = _replies(engine, "base")
    assert all(GenerationSettings.recorded(r.meta) == GenerationSettings(1.0, 1.0, 8, None, None)
               for r in base_replies)
    lines = result.output.splitlines()
    settings = "temperature 1, top_p 1, max_tokens 8, seed provider default, system prompt the prompt's own"
    new_line = next(line for line in lines if line.startswith("settings of NEW dpo1: "))
    base_line = next(line for line in lines if line.startswith("settings of BASE base: "))
    assert settings in new_line and "BASE's; its own has temperature 0.7 vs 1, max_tokens 256 vs 8" in new_line
    assert settings in base_line and "as registered in the database" in base_line
    assert lines[-1].startswith("A/B test 1: dpo1 vs base on 2 prompts: 2 comparisons created")
    with Session(engine) as session:
        recorded = session.exec(select(AbTest)).one().details["settings"]
    assert recorded["same"] is True and recorded["allow_different_settings"] is False
    assert recorded["new"]["settings"]["max_tokens"] == 8 and recorded["new"]["own"]["max_tokens"] == 256
    assert recorded["base"]["settings"] == GenerationSettings(1.0, 1.0, 8, None, None).as_dict()
    # run_generation re-registers what it is given; the A/B test puts NEW's row back as registered.
    assert _row(engine, "dpo1").params == POLICY
    before = _counts(engine)
    again = runner.invoke(app, ["abtest", "dpo1", "--against", "base", "--db", sqlite_url, "--no-progress"])
    assert again.exit_code == 0, again.output
    assert "0 comparisons created (2 already existed)" in again.output
    assert _counts(engine) == before


def test_a_conflicting_registry_entry_is_refused_unless_allowed(engine, sqlite_url, tmp_path):
    """NEW's entry in --config sets other settings than BASE's: one line, exit 1, nothing written. With
    --allow-different-settings NEW keeps its own settings and the row records both; afterwards the
    stored replies themselves (recorded settings) make a plain re-run refuse."""
    project = _project(engine, n_prompts=3, n_clinicians=1)
    held_out = _registered_policy_and_base(engine, project)
    config = tmp_path / "candidates.toml"
    config.write_text('[[candidate]]\nname = "dpo1"\nprovider = "llamacpp"\ntemperature = 0.7\nmax_tokens = 12\n'
                      'threads = 1\n')
    args = ["abtest", "dpo1", "--against", "base", "--db", sqlite_url, "--no-progress", "--config", str(config)]
    before, registered = _counts(engine), _row(engine, "dpo1").params
    line = _one_error_line(runner.invoke(app, args))
    assert f"NEW's entry in {config} has temperature 0.7 vs 1, max_tokens 12 vs 8 (NEW vs BASE)" in line
    assert "--allow-different-settings" in line
    assert _counts(engine) == before and _row(engine, "dpo1").params == registered

    allowed = runner.invoke(app, [*args, "--allow-different-settings"])
    assert allowed.exit_code == 0, allowed.output
    new_line = next(x for x in allowed.output.splitlines() if x.startswith("settings of NEW dpo1: "))
    assert "max_tokens 12" in new_line and f"its entry in {config}" in new_line
    assert "differs from BASE's in temperature 0.7 vs 1, max_tokens 12 vs 8 (--allow-different-settings)" in new_line
    replies = _replies(engine, "dpo1")
    assert [r.prompt_id for r in replies] == held_out
    assert all(GenerationSettings.recorded(r.meta).max_tokens == 12 for r in replies)
    with Session(engine) as session:
        recorded = session.exec(select(AbTest)).one().details["settings"]
    assert (recorded["same"], recorded["allow_different_settings"]) == (False, True)
    assert (recorded["new"]["settings"]["max_tokens"], recorded["base"]["settings"]["max_tokens"]) == (12, 8)
    assert (recorded["new"]["settings"]["temperature"], recorded["base"]["settings"]["temperature"]) == (0.7, 1.0)

    # Without the file, NEW would now take BASE's settings, but its stored replies say 12 tokens.
    before = _counts(engine)
    plain = ["abtest", "dpo1", "--against", "base", "--db", sqlite_url, "--no-progress"]
    line = _one_error_line(runner.invoke(app, plain))
    assert ("NEW's stored replies to 2 of the chosen prompts were generated with temperature 0.7 vs 1, "
            "max_tokens 12 vs 8 (theirs vs BASE's)") in line
    assert _counts(engine) == before
    assert runner.invoke(app, [*plain, "--allow-different-settings"]).exit_code == 0
    assert _counts(engine) == before  # the same test again: nothing new


def test_stored_replies_are_compared_by_their_recorded_settings(engine):
    """With stored replies only: recorded settings that differ are refused (either side's), replies
    without a record are unknown (counted, not refused), a non-model source has none to match."""
    project = _project(engine, n_prompts=3, n_clinicians=1)
    eight = {"settings": GenerationSettings(1.0, 1.0, 8, None, None).as_dict()}
    long = {"settings": GenerationSettings(0.7, 1.0, 256, None, None).as_dict()}
    with Session(engine, expire_on_commit=False) as session:
        new, _ = get_or_create_candidate("new", session=session, provider="llamacpp", params=dict(BASE))
        base, _ = get_or_create_candidate("base", session=session, provider="llamacpp", params=dict(BASE))
        old, _ = get_or_create_candidate("old", session=session, provider="llamacpp", params=dict(BASE))
        for i, prompt in enumerate(project.prompts):
            add_response(prompt, new, f"New reply {i}.", session=session, meta=long if i == 2 else eight)
            add_response(prompt, base, f"Base reply {i}.", session=session, meta=eight)
            add_response(prompt, old, f"Old reply {i}.", session=session)  # generated before settings were recorded
        session.commit()
    before = _counts(engine)
    with Session(engine) as session, pytest.raises(AbTestError, match=re.escape(
            "NEW's stored replies to 1 of the chosen prompts were generated with temperature 0.7 vs 1, "
            "max_tokens 256 vs 8 (theirs vs BASE's)")):
        create_abtest("new", "base", session=session, generate=False)
    assert _counts(engine) == before
    said: list[str] = []
    with Session(engine, expire_on_commit=False) as session:
        first = create_abtest("new", "base", session=session, generate=False,
                              prompts=",".join(str(p.id) for p in project.prompts[:2]), say=said.append)
        unknown = create_abtest("old", "base", session=session, generate=False)
        source = create_abtest("new", "terse", session=session, generate=False, prompts=f"{project.prompts[0].id},")
        allowed = create_abtest("new", "base", session=session, generate=False, allow_different_settings=True)
        session.commit()
    assert first.same_settings is True and said == first.settings and len(said) == 2
    assert said[0].endswith("--no-generate: stored replies only")
    assert "3 of its stored replies record no settings" in unknown.settings[0]
    assert source.settings[1] == ("settings of BASE terse: none to match (provider 'local': its stored replies, "
                                  "not generated by therapref)")
    assert len(allowed.prompt_ids) == 3
    with Session(engine) as session:
        rows = {t.id: t.details["settings"] for t in session.exec(select(AbTest))}
    assert rows[unknown.abtest_id]["new"]["unknown"] == 3 and rows[source.abtest_id]["base"] is None
    assert rows[allowed.abtest_id]["allow_different_settings"] is True


# --- The head-to-head table: length next to the raw figure -------------------------------------------------


def test_table_puts_length_control_next_to_the_raw_rate_and_warns_about_a_length_gap(engine):
    outcomes = [Outcome(i, "win" if i < 8 else "loss", 199, 65) for i in range(10)]
    table = format_table(summarise(outcomes, new="dpo1", base="base", n_bootstrap=0))
    lines = table.splitlines()
    assert lines[1] == ("  warning: new's replies average 199 words, base's 65 (new's 206% longer): the raw win rate "
                        "measures length as much as the model; read the length-controlled win rate, and check that "
                        "both sides were generated with the same settings")
    labels = [line.strip() for line in lines[2:]]
    raw = next(i for i, x in enumerate(labels) if x.startswith("win rate of new"))
    assert labels[raw + 1].startswith("length-controlled win rate (at equal length) [95% CI]")
    assert labels[raw + 2].split()[-3:] == ["199", "/", "65"]
    close = summarise([Outcome(i, "win", 50, 39) for i in range(4)], new="n", base="b", n_bootstrap=0)
    assert close.length_warning == "" and "warning" not in format_table(close)  # 28% apart: no warning
    assert "base's 20 (base's 54% longer)" in summarise([Outcome(1, "win", 13, 20)], new="n", base="b",
                                                       n_bootstrap=0).length_warning
    # From the database the lengths cover every comparison, so the warning comes before any judgment.
    _project(engine, n_prompts=3, n_clinicians=1)
    with Session(engine) as session:
        h = head_to_head("warm", "terse", session=session, n_bootstrap=0)
    assert h.n == 0 and h.mean_len_base == 1 and h.mean_len_new > 10
    assert "warning: new's replies average" in format_table(h)
    assert h.as_dict()["length_warning"] == h.length_warning


# --- A best-of-n candidate has seen its reward model's training prompts ------------------------------------


def _reward_folder(path, meta: dict | None, *, ensemble: bool = False):
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    if meta is not None:
        (path / ("therapref_ensemble.json" if ensemble else "therapref_reward.json")).write_text(json.dumps(meta))
    return path


def test_best_of_n_candidate_has_seen_its_reward_models_training_prompts(engine, tmp_path):
    """Its reward model's train_prompt_keys (and its safety model's, and its base policy's prompts) are
    left out; a reward model trained on a preference file has seen none of this database's prompts."""
    from candidates.best_of_n import register_best_of_n
    from reward.data import load_votes

    project = _project(engine, n_prompts=6, n_clinicians=1, with_judgments=True)
    p = [x.id for x in project.prompts]
    with Session(engine) as session:  # the keys the reward trainer writes are these
        assert {v.prompt_key for v in load_votes(session=session)} == {f"prompt:{i}" for i in p}
    rm = _reward_folder(tmp_path / "rm", {"train_prompt_keys": [f"prompt:{p[0]}", f"prompt:{p[1]}"],
                                          "data": {"origin": "judgments in the database"}})
    safety = _reward_folder(tmp_path / "safety", {"train_prompt_keys": [f"prompt:{p[2]}"],
                                                  "members": ["member-0"]}, ensemble=True)
    from_file = _reward_folder(tmp_path / "rm-file", {"train_prompt_keys": [f"prompt:{p[3]}"],
                                                      "data": {"origin": "preference file hh.jsonl"}})
    with Session(engine, expire_on_commit=False) as session:
        policy, _ = get_or_create_candidate("pol", session=session, provider="llamacpp", params=dict(BASE))
        session.add(PolicyRun(path="/m", method="sft", candidate_model_id=policy.id,
                              provenance={"prompt_ids": [p[4]]}))
        get_or_create_candidate("plain", session=session, provider="llamacpp", params=dict(BASE))
        for name, of, reward, safe in (("bon", "pol", rm, safety), ("bon-file", "plain", from_file, None)):
            row = register_best_of_n(name, of=of, best_of=3, reward_model=str(reward), session=session,
                                     safety_model=str(safe) if safe else None)
            for prompt in project.prompts:
                add_response(prompt, row, f"{name} reply to {prompt.id}.", session=session)
        session.commit()
    with Session(engine, expire_on_commit=False) as session:
        result = create_abtest("bon", "terse", session=session, generate=False)
        from_file_result = create_abtest("bon-file", "terse", session=session, generate=False)
        session.commit()
    assert result.prompt_ids == [p[3], p[5]] and result.excluded_seen == 4
    assert result.basis.startswith("best-of-3 candidate bon: its reward model ")
    assert "train_prompt_keys" in result.basis and "its base pol: policy run" in result.basis
    assert result.policy_run_id is not None and not result.all_eligible
    assert from_file_result.prompt_ids == p and from_file_result.excluded_seen == 0
    assert from_file_result.all_eligible and "trained on a preference file hh.jsonl" in str(from_file_result)
    with Session(engine) as session:
        assert {t.details["basis"] for t in session.exec(select(AbTest))} == {result.basis, from_file_result.basis}

    (rm / "therapref_reward.json").write_text(json.dumps({"format": 1}))
    before = _counts(engine)
    with Session(engine) as session, pytest.raises(AbTestError, match="records no train_prompt_keys"):
        create_abtest("bon", "terse", session=session, generate=False)
    assert _counts(engine) == before


def test_trained_prompt_ids_reads_the_trainers_keys_only():
    assert trained_prompt_ids({"train_prompt_keys": ["prompt:2", "prompt:2"]}) == {2}
    with pytest.raises(AbTestError, match="not a prompt:<id> key"):
        trained_prompt_ids({"train_prompt_keys": [["user", "hi"]]})
