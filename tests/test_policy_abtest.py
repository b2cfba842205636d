"""A/B tests of a new candidate against a base (``policy.abtest``), their head-to-head figures
(``analytics.head_to_head``), the report and dashboard tables, ``therapref abtest`` (with the
reward-model proxy) and the export manifest's ``prompt_ids`` that the held-out choice rests on."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from sqlmodel import Session, func, select
from typer.testing import CliRunner

from analytics.head_to_head import Outcome, head_to_head, summarise
from db.auth import create_annotator
from db.crud import (
    add_comparison,
    add_judgment,
    add_response,
    get_or_create_candidate,
    get_or_create_prompt,
    get_or_create_source_annotator,
)
from db.models import AbTest, AuditEvent, CandidateModel, Comparison, PolicyRun, Prompt, Response
from policy.abtest import AbTestError, create_abtest, parse_prompt_spec
from tests.factories import HOSTILE_NAME, PASSWORD, build_project, user
from tests.tiny_models import untrained_reward_model
from therapref.cli import app

runner = CliRunner()


def _project(engine, **kwargs):
    with Session(engine, expire_on_commit=False) as session:
        return build_project(session, **kwargs)


def _counts(engine) -> tuple[int, int, int]:
    with Session(engine) as session:
        return tuple(session.exec(select(func.count(table.id))).one() for table in (Comparison, AbTest, Response))


def _policy(engine, name: str, provenance: dict, *, provider: str = "local", replies_for=(), **fields) -> int:
    """A candidate (optionally with stored replies to some prompts) and the PolicyRun behind it."""
    with Session(engine, expire_on_commit=False) as session:
        candidate, _ = get_or_create_candidate(name, session=session, provider=provider, **fields)
        for prompt in replies_for:
            add_response(prompt, candidate, f"{name} answers: you are not alone with '{prompt.id}'.", session=session)
        run = PolicyRun(path="/models/x", method="dpo", base_model="embedded", provenance=provenance,
                        candidate_model_id=candidate.id)
        session.add(run)
        session.commit()
        return run.id


# --- Held-out prompts, priority, idempotency ---------------------------------------------------------


def test_abtest_generates_with_the_embedded_model_on_held_out_prompts_only(engine):
    """A llama.cpp policy whose manifest lists two prompts: replies are generated for the four others
    only, compared with the base's stored replies at the front of the queue; a re-run adds nothing."""
    project = _project(engine, n_prompts=6, n_clinicians=2)
    seen = [project.prompts[1].id, project.prompts[4].id]
    run_id = _policy(engine, "smollm2-dpo", {"kind": "dpo", "prompt_ids": seen}, provider="llamacpp",
                     model_id="embedded", params={"max_tokens": 6, "temperature": 0.0, "threads": 1})
    result = create_abtest("smollm2-dpo", "warm", engine=engine, overlap=2)
    held_out = sorted({p.id for p in project.prompts} - set(seen))
    assert result.prompt_ids == held_out
    assert (result.created, result.existing, result.excluded_seen) == (4, 0, 2)
    assert result.policy_run_id == run_id and "prompt_ids" in result.basis
    assert "4 comparisons created" in str(result) and "2 prompts excluded as seen in training" in str(result)
    with Session(engine) as session:
        new_id = session.exec(select(CandidateModel.id).where(CandidateModel.name == "smollm2-dpo")).one()
        replies = session.exec(select(Response).where(Response.candidate_model_id == new_id)).all()
        assert sorted(r.prompt_id for r in replies) == held_out  # nothing generated for seen prompts
        assert all(r.meta["provider"] == "llamacpp" and 0 < r.meta["completion_tokens"] <= 6 for r in replies)
        tested = session.exec(select(Comparison).where(Comparison.id.in_(
            session.exec(select(AbTest)).one().details["comparison_ids"]))).all()
        others = session.exec(select(Comparison).where(Comparison.id.notin_([c.id for c in tested]))).all()
        assert sorted(c.prompt_id for c in tested) == held_out
        assert all(c.judgments_required == 2 for c in tested)
        assert min(c.priority for c in tested) > max(c.priority for c in others)
        test = session.exec(select(AbTest)).one()
        assert (test.overlap, test.policy_run_id, sorted(test.prompt_ids)) == (2, run_id, held_out)
        assert session.exec(select(AuditEvent).where(AuditEvent.action == "abtest.create")).one()
    before = _counts(engine)
    again = create_abtest("smollm2-dpo", "warm", engine=engine, overlap=2)
    assert (again.abtest_id, again.created, again.existing, again.priority) == (result.abtest_id, 0, 4, result.priority)
    assert _counts(engine) == before
    with Session(engine) as session:
        assert len(session.exec(select(AuditEvent).where(AuditEvent.action == "abtest.create")).all()) == 1


def test_training_file_fallback_matches_conversations_by_content_hash(engine, tmp_path):
    """A manifest without prompt_ids: the training file's conversations (whatever system message the
    export wrote) are matched to prompts by the importers' content hash."""
    project = _project(engine, n_prompts=5, n_clinicians=1)
    trained = project.prompts[:2]
    training = tmp_path / "sft.jsonl"
    with training.open("w") as out:
        for prompt in trained:
            row = {"messages": [{"role": "system", "content": "Another persona."}, *prompt.messages,
                                {"role": "assistant", "content": "A reply."}]}
            out.write(json.dumps(row) + "\n")
        out.write(json.dumps({"messages": [*user("A conversation the database never saw."),
                                           {"role": "assistant", "content": "x"}]}) + "\n")
    _policy(engine, "policy-sft", {"kind": "sft", "path": str(training)}, replies_for=project.prompts)
    with Session(engine, expire_on_commit=False) as session:
        result = create_abtest("policy-sft", "terse", session=session, generate=False, priority=7.5)
        session.commit()
    assert result.prompt_ids == [p.id for p in project.prompts[2:]]
    assert result.excluded_seen == 2 and "content hash" in result.basis
    with Session(engine) as session:
        priorities = {c.prompt_id: c.priority for c in session.exec(select(Comparison)).all()
                      if c.id in session.exec(select(AbTest)).one().details["comparison_ids"]}
    assert priorities == {p.id: 7.5 for p in project.prompts[2:]}


def test_external_candidate_all_prompts_eligible_random_draw_and_specs(engine):
    project = _project(engine, n_prompts=6, n_clinicians=1)
    with Session(engine, expire_on_commit=False) as session:
        external, _ = get_or_create_candidate("gpt-x", session=session, provider="reference")
        for prompt in project.prompts:
            add_response(prompt, external, f"External reply {prompt.id}.", session=session)
        project.prompts[5].topic = "sleep"
        session.add(project.prompts[5])
        session.commit()
    with Session(engine, expire_on_commit=False) as session:
        first = create_abtest("gpt-x", "warm", session=session, prompts=3, seed=4, generate=False)
        session.commit()
    assert len(first.prompt_ids) == 3 and first.excluded_seen == 0
    assert first.all_eligible and "no policy run" in str(first)
    with Session(engine, expire_on_commit=False) as session:
        again = create_abtest("gpt-x", "warm", session=session, prompts="3", seed=4, generate=False)
        session.commit()
    assert (again.prompt_ids, again.created, again.abtest_id) == (first.prompt_ids, 0, first.abtest_id)
    spec = f"{project.prompts[0].id},topic:sleep"
    with Session(engine, expire_on_commit=False) as session:
        named = create_abtest("gpt-x", "warm", session=session, prompts=spec, generate=False)
        session.commit()
    assert named.prompt_ids == [project.prompts[0].id, project.prompts[5].id]
    assert named.abtest_id != first.abtest_id  # other prompts: a test of its own


def test_named_prompts_seen_in_training_are_left_out_and_bad_input_changes_nothing(engine):
    project = _project(engine, n_prompts=4, n_clinicians=1)
    p = [x.id for x in project.prompts]
    _policy(engine, "policy-x", {"prompt_ids": [p[0]]}, replies_for=project.prompts)
    with Session(engine, expire_on_commit=False) as session:
        result = create_abtest("policy-x", "warm", session=session, prompts=f"{p[0]}-{p[2]}", generate=False)
        session.commit()
    assert result.prompt_ids == p[1:3] and result.excluded_seen == 1
    before = _counts(engine)
    for kwargs, message in ((dict(prompts="9999,"), "unknown prompt id(s): 9999"),
                            (dict(prompts="source:nowhere"), "no prompts with source 'nowhere'"),
                            (dict(prompts=f"id:{p[0]}"), "no eligible prompts"),
                            (dict(prompts="0"), "N must be at least 1"),
                            (dict(overlap=0), "--overlap must be at least 1")):
        with Session(engine) as session, pytest.raises(AbTestError, match=re.escape(message)):
            create_abtest("policy-x", "warm", session=session, generate=False, **kwargs)
    with Session(engine) as session, pytest.raises(AbTestError, match="unknown candidate 'nobody'"):
        create_abtest("nobody", "warm", session=session, generate=False)
    assert _counts(engine) == before
    assert parse_prompt_spec("2-3,source:test").ids == (2, 3)


# --- Head-to-head figures -------------------------------------------------------------------------------


def _hand_wilson(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval written out by hand (not the library's function)."""
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n), (centre + spread) / (1 + z * z / n)


def _known_answer_db(engine):
    """12 comparisons of NEW vs BASE (NEW on side a for half of them): a clinician's 7 wins, 3 losses
    and 2 ties for NEW; one NEW reply flagged; an imported source's votes, which must not count."""
    with Session(engine, expire_on_commit=False) as session:
        new, _ = get_or_create_candidate("policy <b>new</b>", session=session, provider="local")
        base, _ = get_or_create_candidate("base", session=session, provider="local")
        clinician = create_annotator("dr.ab", PASSWORD, session=session)
        imported = get_or_create_source_annotator("dataset", session=session)
        outcomes = ["win"] * 7 + ["loss"] * 3 + ["tie"] * 2
        prompt_ids = []
        for i, outcome in enumerate(outcomes):
            prompt, _ = get_or_create_prompt(user(f"Patient message number {i}."), session=session, source="ab")
            prompt_ids.append(prompt.id)
            order = [(new, "new"), (base, "base")] if i % 2 else [(base, "base"), (new, "new")]
            replies = {label: add_response(prompt, cand, f"Same length reply from {label} {i}.", session=session)[0]
                       for cand, label in order}
            comparison, _ = add_comparison(replies["new"], replies["base"], session=session)
            new_side = "a" if comparison.response_a_id == replies["new"].id else "b"
            base_side = "b" if new_side == "a" else "a"
            preferred = {"win": new_side, "loss": base_side, "tie": "tie"}[outcome]
            flags = {f"flags_{new_side}": ["misses_risk"]} if i == 0 else {}
            add_judgment(comparison, clinician, preferred, session=session, strength=1 if preferred != "tie" else None,
                         **flags)
            add_judgment(comparison, imported, base_side, session=session, strength=1)
        session.add(AbTest(new_candidate_id=new.id, base_candidate_id=base.id, prompt_ids=prompt_ids, overlap=1,
                           priority=3.0))
        session.commit()


def test_head_to_head_known_answer(engine):
    _known_answer_db(engine)
    with Session(engine) as session:
        h = head_to_head("policy <b>new</b>", "base", session=session, n_bootstrap=300)
        imported = head_to_head("policy <b>new</b>", "base", session=session, sources="imported", n_bootstrap=0)
    assert (h.n, h.wins, h.losses, h.ties, h.both_bad, h.comparisons) == (12, 7, 3, 2, 0, 12)
    assert h.win_rate.value == pytest.approx(8 / 12)  # ties are half a win
    low, high = _hand_wilson(8, 12)
    assert (h.win_rate.low, h.win_rate.high) == (pytest.approx(low, abs=1e-6), pytest.approx(high, abs=1e-6))
    assert (round(low, 3), round(high, 3)) == (0.391, 0.862)
    assert h.bt_diff.value == pytest.approx(math.log(2), abs=0.01)  # log-odds of 8 : 4
    assert h.bt_diff.low < math.log(2) < h.bt_diff.high
    assert h.length_controlled.value == pytest.approx(8 / 12, abs=0.01)  # equal lengths: no correction
    assert h.flags_new.value == pytest.approx(1 / 12) and h.flags_base.value == 0
    assert h.flag_counts_new == {"misses_risk": 1}
    assert (imported.wins, imported.losses) == (0, 12)  # the imported votes are there, counted apart


def test_both_bad_counts_as_a_tie_and_length_control_reads_at_equal_length():
    h = summarise([Outcome(1, "win"), Outcome(2, "both_bad")], new="n", base="b", n_bootstrap=0)
    assert (h.both_bad, h.win_rate.value) == (1, 0.75)
    # Long replies (length difference +1/3) win 8 of 10, short ones (−1/3) 1 of 5: raw 9/15; at equal
    # length the fitted rate is ½ (logits ±log 4 around zero).
    longer = [Outcome(i, "win" if i < 8 else "loss", 20, 10) for i in range(10)]
    shorter = [Outcome(10 + i, "win" if i < 1 else "loss", 10, 20) for i in range(5)]
    h = summarise(longer + shorter, new="n", base="b", n_bootstrap=200)
    assert h.win_rate.value == pytest.approx(0.6)
    assert h.length_controlled.value == pytest.approx(0.5, abs=0.01)
    # logit slope: 2·log 4 over a difference of 2/3; the small ridge shrinks it by a few percent
    assert h.length_coef == pytest.approx(2 * math.log(4) * 1.5, rel=0.06)
    assert h.length_coef < 2 * math.log(4) * 1.5
    assert h.length_controlled.low < 0.5 < h.length_controlled.high
    assert np.isfinite(h.bt_diff.low)


def test_report_and_results_show_the_head_to_head_table(engine, sqlite_url, tmp_path):
    _known_answer_db(engine)
    out = tmp_path / "report"
    result = runner.invoke(app, ["report", "--output", str(out), "--db", sqlite_url, "--bootstrap", "50"])
    assert result.exit_code == 0, result.output
    markdown = (out / "report.md").read_text()
    assert "## Head\\-to\\-head (A/B tests)" in markdown or "## Head-to-head (A/B tests)" in markdown
    assert "| win rate of new (ties and both bad = ½) \\[95% CI\\] | 0.667 \\[0.391, 0.862\\] (n=12) |" in markdown
    assert "7 / 3 / 2 / 0" in markdown
    html = (out / "report.html").read_text()
    assert ">Head-to-head (A/B tests)</h2>" in html
    assert "policy &lt;b&gt;new&lt;/b&gt;" in html and "policy <b>new</b>" not in html  # untrusted name
    figures = json.loads((out / "report.json").read_text())["head_to_head"][0]
    assert figures["head_to_head"]["wins"] == 7 and figures["prompts"] == 12
    shown = runner.invoke(app, ["abtest", "policy <b>new</b>", "--against", "base", "--results", "--db", sqlite_url,
                                "--bootstrap", "0"])
    assert shown.exit_code == 0, shown.output
    assert "Head-to-head on 12 prompts of 1 A/B test(s):" in shown.output
    assert "judged by clinicians" in shown.output and "0.667 [0.391, 0.862] (n=12)" in shown.output



def test_ab_table_counts_model_judges_only_when_asked_for(any_engine, tmp_path):
    """A model judge (``judge:*``, role source) is not "imported": ``--results --sources imported|both``
    leaves its verdicts out; ``judges``, ``judge:NAME`` and ``all`` count them (db.rules.Sources)."""
    _known_answer_db(any_engine)
    with Session(any_engine) as session:
        judge = get_or_create_source_annotator("judge:m", session=session)
        new_id = session.exec(select(CandidateModel.id).where(CandidateModel.name == "policy <b>new</b>")).one()
        for comparison in session.exec(select(Comparison)).all():
            a_is_new = session.get(Response, comparison.response_a_id).candidate_model_id == new_id
            add_judgment(comparison, judge, "a" if a_is_new else "b", session=session, strength=1)
        session.commit()
    url = any_engine.url.render_as_string(hide_password=False)

    def table(sources: str) -> str:
        shown = runner.invoke(app, ["abtest", "policy <b>new</b>", "--against", "base", "--results", "--db", url,
                                    "--bootstrap", "0", "--sources", sources])
        assert shown.exit_code == 0, shown.output
        return shown.output

    assert "0 / 12 / 0 / 0" in table("imported")  # the dataset's votes, never the judge's wins
    assert "7 / 15 / 2 / 0" in table("both")  # clinician and dataset
    assert "12 / 0 / 0 / 0" in table("judges") and "12 / 0 / 0 / 0" in table("judge:m")
    assert "19 / 15 / 2 / 0" in table("all")
    bad = runner.invoke(app, ["abtest", "policy <b>new</b>", "--against", "base", "--results", "--db", url,
                              "--sources", "clinician"])
    assert bad.exit_code == 1 and "--sources 'clinician'" in bad.output and "Traceback" not in bad.output

# --- The command line -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
    """A real (tiny, untrained-head) reward model on the embedded MiniLM base."""
    return untrained_reward_model(tmp_path_factory.mktemp("rm") / "model")


def test_cli_creates_once_and_judges_with_a_reward_model_as_a_proxy(engine, sqlite_url, reward_dir):
    project = _project(engine, n_prompts=4, n_clinicians=1)
    _policy(engine, "policy-cli", {"prompt_ids": [project.prompts[0].id]}, replies_for=project.prompts)
    args = ["abtest", "policy-cli", "--against", "terse", "--db", sqlite_url, "--no-generate", "--overlap", "2"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert first.output.strip().splitlines() == [
        "A/B test 1: policy-cli vs terse on 3 prompts: 3 comparisons created (0 already existed), overlap 2, "
        "priority 1; 1 prompts excluded as seen in training."]
    judged = runner.invoke(app, [*args, "--judge", f"reward:{reward_dir}", "--bootstrap", "50"])
    assert judged.exit_code == 0, judged.output
    lines = judged.output.splitlines()
    assert "3 comparisons already existed" not in lines[0] and "0 comparisons created (3 already existed)" in lines[0]
    # (stderr, mixed in here, carries the model loader's progress bar, which ends without a newline)
    title = f"policy-cli (new) vs terse (base), judged by proxy: reward model {reward_dir}, not clinicians"
    assert any(line.endswith(title) for line in lines)
    assert "mean P(new better)" in judged.output
    assert [line.split()[-1] for line in lines if line.strip().startswith("judgments (comparisons")] == ["3)"]
    assert "flagged" not in judged.output  # a reward model flags nothing: no safety rows in the proxy table
    with Session(engine) as session:
        assert session.exec(select(func.count(AbTest.id))).one() == 1
        assert session.exec(select(func.count(Comparison.id))).one() == 4 + 3


def test_cli_bad_input_is_one_line_and_changes_nothing(engine, sqlite_url, tmp_path):
    project = _project(engine, n_prompts=2, n_clinicians=1)
    _policy(engine, "policy-bad", {"prompt_ids": []}, replies_for=project.prompts)
    before = _counts(engine)
    for extra, message in ((["--judge", "gpt-4o"], "--judge: expected reward:DIR"),
                           (["--judge", f"reward:{tmp_path}"], "not a reward model folder"),
                           (["--prompts", "x-y"], "is not an id, a range"),
                           (["--against", HOSTILE_NAME], "unknown candidate")):
        args = ["abtest", "policy-bad", "--against", "warm", "--db", sqlite_url, "--no-generate", *extra]
        result = runner.invoke(app, args)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
        assert message in lines[0]
    assert _counts(engine) == before


# --- The export manifest lists the prompts it wrote ----------------------------------------------------------


def test_export_manifest_lists_the_prompts_of_the_rows(engine, sqlite_url, tmp_path):
    project = _project(engine, n_prompts=4, n_clinicians=1)
    with Session(engine, expire_on_commit=False) as session:
        clinician = session.get(type(project.clinicians[0]), project.clinicians[0].id)
        for index in (0, 2):
            comparison = session.get(Comparison, project.comparisons[index].id)
            add_judgment(comparison, clinician, "a", session=session, strength=2)
        session.commit()
    judged = sorted(project.prompts[i].id for i in (0, 2))
    for kind in ("dpo", "sft", "kto"):
        out = tmp_path / f"{kind}.jsonl"
        result = runner.invoke(app, ["export", kind, "--db", sqlite_url, "--output", str(out)])
        assert result.exit_code == 0, result.output
        manifest = json.loads((tmp_path / f"{kind}.jsonl.manifest.json").read_text())
        assert manifest["prompt_ids"] == judged, kind
        with Session(engine) as session:  # every row's conversation is one of those prompts
            texts = {session.get(Prompt, pid).messages[-1]["content"] for pid in judged}
        for line in out.read_text().splitlines():
            row = json.loads(line)
            turns = row.get("messages") or row.get("prompt")
            assert [t["content"] for t in turns if t["role"] == "user"][-1] in texts


def test_admin_dashboard_lists_each_abtest_table(tmp_path):
    """The analytics page (Streamlit AppTest, real SQLite) shows one table per A/B test; the
    candidate name with markup is plain text."""
    from streamlit.testing.v1 import AppTest

    from db.engine import make_engine
    from db.migrate import upgrade
    from labeling_app import state
    from tests.app_helpers import ROOT
    from therapref.settings import Settings

    path = tmp_path / "therapref.db"
    engine = make_engine(path)
    upgrade(engine)
    _known_answer_db(engine)
    with Session(engine) as session:
        admin = create_annotator("lead", PASSWORD, session=session, role="admin")
        session.commit()
        admin_id = admin.id
    engine.dispose()
    at = AppTest.from_file(str(ROOT / "labeling_app" / "pages" / "admin_dashboard.py"), default_timeout=120)
    at.session_state[state.SETTINGS_KEY] = Settings(database_url=f"sqlite:///{path}")
    at.session_state[state.USER_KEY] = state.User(admin_id, "lead", "Lead", "admin")
    at.run()
    assert not at.exception, at.exception
    assert "Head-to-head (A/B tests)" in {h.value for h in at.header}
    captions = [t.value for t in at.text if t.value.startswith("A/B test ")]
    assert len(captions) == 1 and "policy <b>new</b> (new) vs base (base) on 12 held-out prompts" in captions[0]
    table = next(d.value for d in at.dataframe if list(d.value.columns) == ["measure", "value"])
    values = dict(zip(table["measure"], table["value"], strict=True))
    assert values["new wins / losses / ties / both bad"] == "7 / 3 / 2 / 0"
    assert values["win rate of new (ties and both bad = ½) [95% CI]"] == "0.667 [0.391, 0.862] (n=12)"


def test_prioritize_leaves_the_abtest_at_the_front(engine):
    """`therapref prioritize` reorders the rest of the queue; an A/B test's comparisons keep the
    priority their test gave them, and are still served first."""
    from candidates.priority import prioritize
    from db.assignment import next_comparison

    project = _project(engine, n_prompts=6, n_clinicians=1)
    with Session(engine, expire_on_commit=False) as session:
        external, _ = get_or_create_candidate("gpt-x", session=session, provider="reference")
        for prompt in project.prompts:
            add_response(prompt, external, f"External reply {prompt.id}.", session=session)
        session.commit()
    with Session(engine, expire_on_commit=False) as session:
        result = create_abtest("gpt-x", "warm", session=session, prompts=2, seed=1, generate=False)
        session.commit()
        tested = set(session.exec(select(AbTest)).one().details["comparison_ids"])
        front = {c.id: c.priority for c in session.exec(select(Comparison)).all() if c.id in tested}
    with Session(engine, expire_on_commit=False) as session:
        summary = prioritize("random", session=session, seed=3)
        session.commit()
        assert summary.set == 6  # the six warm-vs-terse pairs, not the two A/B comparisons
        after = {c.id: c.priority for c in session.exec(select(Comparison)).all()}
        assert {cid: after[cid] for cid in tested} == front
        assert max(v for cid, v in after.items() if cid not in tested) < min(front.values())
        served = next_comparison(project.clinicians[0].id, session=session)
        assert served.comparison_id in tested
    assert len(result.prompt_ids) == 2
