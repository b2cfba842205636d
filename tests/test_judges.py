"""``therapref judge``: model judges as pre-annotators, and the gate that lets them stand in.

- A real OpenAI-compatible server: ``python -m llama_cpp.server`` on the embedded SmolLM2 GGUF (a tiny
  model: its verdicts are often malformed, which is fine: each comparison ends with a well-formed
  stored verdict or a recorded failure, never a malformed judgment).
- Misbehaving endpoints: ``candidates.fake_server.FakeOpenAIServer`` stands in for a judge that answers
  with malformed JSON, refusals or bad values, then with good verdicts (the only thing scripted here).
- ``reward:DIR``: a real (tiny, untrained-head) sequence-classification model on the embedded MiniLM base.
- The gate and the report's "Judges vs clinicians" section on a hand-built database with known agreement.
"""

from __future__ import annotations

import json
import math

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from analytics.config import AnalyticsConfig
from analytics.gate import JudgeStanding, may_stand_in, qualifies
from analytics.judges import apply_gate, load_judges_report
from candidates.fake_server import FakeOpenAIServer
from db.crud import add_judgment
from db.judges import judge_annotator, record_verdict
from db.models import PREFERENCES, Annotator, Comparison, JudgeFailure, JudgeVerdict, Judgment
from db.rules import Sources
from tests.candidates_helpers import llama_server
from tests.factories import PATIENT_MESSAGES, build_project
from tests.tiny_models import untrained_reward_model
from therapref.cli import app

runner = CliRunner()
GOOD = json.dumps({"preferred": "a", "confidence": 0.9, "safety_concern": False, "flags_a": [],
                   "flags_b": ["dismissive"], "rationale": "A reflects the feeling; B brushes it off."})


def _registry(tmp_path, url: str, name: str = "judge-model", **extra) -> str:
    lines = [f'[[candidate]]\nname = "{name}"\nprovider = "openai"\nmodel_id = "{name}"\nbase_url = "{url}"\n'
             "temperature = 0.0\nseed = 1\nmax_retries = 0\ntimeout = 120.0\n"]
    lines += [f"{key} = {value}\n" for key, value in extra.items()]
    path = tmp_path / "candidates.toml"
    path.write_text("".join(lines))
    return str(path)


def _state(session: Session, username: str) -> tuple[dict[int, Judgment], dict[int, JudgeFailure]]:
    session.expire_all()
    judge = session.exec(select(Annotator).where(Annotator.username == username)).one()
    judgments = {j.comparison_id: j for j in session.exec(select(Judgment).where(Judgment.annotator_id == judge.id))}
    failures = {f.comparison_id: f
                for f in session.exec(select(JudgeFailure).where(JudgeFailure.annotator_id == judge.id))}
    return judgments, failures


def _assert_verdicts_well_formed(session: Session, judgments: dict[int, Judgment]) -> None:
    for judgment in judgments.values():
        assert judgment.preferred in PREFERENCES
        assert judgment.shown_left in ("a", "b")
        verdict = session.exec(select(JudgeVerdict).where(JudgeVerdict.judgment_id == judgment.id)).one()
        assert 0.0 <= verdict.confidence <= 1.0
        assert verdict.safety_concern in (True, False)
        assert verdict.stands_in is False


# --- A real OpenAI-compatible server ----------------------------------------------------------------

def test_judge_against_real_llama_cpp_server(tmp_path, engine):
    db = engine.url.database
    with Session(engine, expire_on_commit=False) as session:
        project = build_project(session, n_prompts=2, n_clinicians=1, judgments_required=2)
    ids = {c.id for c in project.comparisons}
    with llama_server("smollm2-judge", log=tmp_path / "llama-server.log") as url:
        config = _registry(tmp_path, url, "smollm2-judge", max_tokens=48)
        first = runner.invoke(app, ["judge", "--judge", "smollm2-judge", "--config", config, "--db", db,
                                    "--no-progress"])
        assert first.exit_code in (0, 1), first.output
        assert "Judge judge:smollm2-judge: " in first.stdout
        with Session(engine) as session:
            judgments, failures = _state(session, "judge:smollm2-judge")
            # Every comparison ends with a well-formed verdict or a recorded failure, never both.
            assert set(judgments) | set(failures) == ids
            assert not set(judgments) & set(failures)
            _assert_verdicts_well_formed(session, judgments)
            assert all(f.error and f.attempts == 1 for f in failures.values())
        second = runner.invoke(app, ["judge", "--judge", "smollm2-judge", "--config", config, "--db", db,
                                     "--no-progress"])
        assert second.exit_code in (0, 1), second.output
    with Session(engine) as session:
        again, failed_again = _state(session, "judge:smollm2-judge")
        assert set(again) | set(failed_again) == ids
        assert {cid: j.id for cid, j in judgments.items()} == {cid: again[cid].id for cid in judgments}  # kept
        assert all(failed_again[cid].attempts == 2 for cid in failures if cid in failed_again)  # retried
        # A judge's verdicts never fill a clinician's place unless the gate says so.
        assert all(c.judgments_count == 0 for c in session.exec(select(Comparison)))


def test_embedded_judge_offline(engine):
    """SmolLM2 in-process (the offline demo): its grammar-held answer is stored as a verdict that does not
    count, or recorded as a failure; one comparison only (about half a minute on two busy cores)."""
    db = engine.url.database
    with Session(engine, expire_on_commit=False) as session:
        project = build_project(session, n_prompts=2, n_clinicians=1, judgments_required=2)
    target = project.comparisons[1].id
    result = runner.invoke(app, ["judge", "--judge", "embedded", "--comparisons", str(target), "--db", db,
                                 "--no-progress"])
    assert result.exit_code in (0, 1), result.output
    assert "Judge judge:embedded: " in result.stdout
    with Session(engine) as session:
        judgments, failures = _state(session, "judge:embedded")
        assert set(judgments) | set(failures) == {target} and len(judgments) + len(failures) == 1
        _assert_verdicts_well_formed(session, judgments)
        assert all(j.guideline_version == 1 for j in judgments.values())
    unknown = runner.invoke(app, ["judge", "--judge", "embedded", "--comparisons", "999", "--db", db])
    assert unknown.exit_code == 1 and "unknown comparison id(s): 999" in unknown.output


# --- Misbehaving endpoints (the fake server stands in for them) --------------------------------------

def test_malformed_and_refusing_verdicts_are_failures_retried_next_run(tmp_path, any_db_url, any_engine):
    with Session(any_engine, expire_on_commit=False) as session:
        project = build_project(session, n_prompts=4, n_clinicians=1, judgments_required=2)
    by_message = {PATIENT_MESSAGES[i]: c.id for i, c in enumerate(project.comparisons)}
    bad = {
        PATIENT_MESSAGES[0]: "Reply A is better because it is kinder.",
        PATIENT_MESSAGES[1]: "I'm sorry, but I can't help with judging this conversation.",
        PATIENT_MESSAGES[2]: '{"preferred": "left", "confidence": 0.9, "safety_concern": false}',
    }
    plan = {message[:40]: [("text", text), ("text", GOOD)] for message, text in bad.items()}
    plan[PATIENT_MESSAGES[3][:40]] = [("text", GOOD)]
    with FakeOpenAIServer(plan=plan) as server:
        config = _registry(tmp_path, server.url)
        args = ["judge", "--judge", "judge-model", "--config", config, "--db", any_db_url, "--no-progress"]
        first = runner.invoke(app, args)
        assert first.exit_code == 1, first.output
        assert "1 verdicts stored, 3 failed (recorded; retried by the next run)" in first.stdout
        with Session(any_engine) as session:
            judgments, failures = _state(session, "judge:judge-model")
            assert set(judgments) == {by_message[PATIENT_MESSAGES[3]]}
            assert failures[by_message[PATIENT_MESSAGES[0]]].error.startswith("malformed verdict: no JSON object")
            assert failures[by_message[PATIENT_MESSAGES[1]]].error.startswith("refused: I'm sorry")
            assert "preferred must be one of a, b, tie, both_bad" in failures[by_message[PATIENT_MESSAGES[2]]].error
            assert failures[by_message[PATIENT_MESSAGES[0]]].answer == bad[PATIENT_MESSAGES[0]]
        # The fake turns good: the next run stores exactly the failed ones and asks nothing twice.
        second = runner.invoke(app, args)
        assert second.exit_code == 0, second.output
        assert "3 verdicts stored, 0 failed, 1 already judged" in second.stdout
        assert len(server.calls_for(PATIENT_MESSAGES[3][:40])) == 1
        third = runner.invoke(app, args)
        assert "nothing to judge; all 4 selected comparisons already judged" in third.stdout
        assert len(server.calls) == 7
        sent = {c.user: c for c in server.calls}
    with Session(any_engine) as session:
        judgments, failures = _state(session, "judge:judge-model")
        assert failures == {} and set(judgments) == set(by_message.values())
        _assert_verdicts_well_formed(session, judgments)
        texts = {c.id: c for c in session.exec(select(Comparison))}
        for judgment in judgments.values():
            # "a" meant Response A, i.e. the side shown first; B's flag lands on the other side.
            assert judgment.preferred == judgment.shown_left
            assert (judgment.flags_b if judgment.shown_left == "a" else judgment.flags_a) == ["dismissive"]
            assert texts[judgment.comparison_id].judgments_count == 0
        assert {j.shown_left for j in judgments.values()} == {"a", "b"}  # both orders were used (seed 0)
        guideline = next(iter(sent.values())).body["messages"][0]["content"]
        assert "Prefer replies that are safe, empathic and specific." in guideline
        assert '"preferred": "a" | "b" | "tie" | "both_bad"' in guideline
        for user in sent:
            cid = next(cid for message, cid in by_message.items() if message[:40] in user)
            comparison = texts[cid]
            from db.models import Response
            first_id = comparison.response_a_id if judgments[cid].shown_left == "a" else comparison.response_b_id
            assert f"Response A:\n{session.get(Response, first_id).text}" in user


# --- The gate's rules --------------------------------------------------------------------------------

def test_unsafe_always_goes_to_clinicians():
    for flagged, concern in ((True, False), (False, True), (True, True)):
        assert not may_stand_in(confidence=1.0, judge_qualifies=True, flagged=flagged, safety_concern=concern)


def test_a_judge_below_the_clinicians_agreement_never_stands_in():
    ok, reason = qualifies(JudgeStanding(kappa=0.5, n_shared=50, clinician_kappa=0.6))
    assert not ok and "below their own 0.60" in reason
    assert not may_stand_in(confidence=1.0, judge_qualifies=ok, flagged=False, safety_concern=False)


def test_confident_and_above_the_bar_stands_in():
    ok, _ = qualifies(JudgeStanding(kappa=0.8, n_shared=50, clinician_kappa=0.6, gold_kappa=0.9, n_gold=5))
    assert ok
    assert may_stand_in(confidence=0.85, judge_qualifies=ok, flagged=False, safety_concern=False, min_confidence=0.8)
    assert not may_stand_in(confidence=0.75, judge_qualifies=ok, flagged=False, safety_concern=False,
                            min_confidence=0.8)


# --- The gate and the report on a database with known agreement --------------------------------------

CLIN0 = ["a", "b"] * 6                      # twelve comparisons
CLIN1 = ["b", "a"] + CLIN0[2:]              # disagrees with clin0 on the first two only


def _pooled_kappa(judge: list[str], clinicians: list[list[str]]) -> float:
    """Cohen's kappa over (judge, clinician) pairs, computed by hand."""
    pairs = [(j, c[i]) for c in clinicians for i, j in enumerate(judge)]
    n = len(pairs)
    p_o = sum(x == y for x, y in pairs) / n
    p_e = sum((sum(x == v for x, _ in pairs) / n) * (sum(y == v for _, y in pairs) / n) for v in PREFERENCES)
    return (p_o - p_e) / (1 - p_e)


def _gate_database(engine):
    with Session(engine, expire_on_commit=False) as session:
        project = build_project(session, n_prompts=6, n_clinicians=2, judgments_required=3)
        warm, terse = project.candidates
        # Twelve comparisons: six prompts × two pairs (warm vs terse, and warm vs a second terse reply).
        from db.crud import add_comparison, add_response
        comparisons = list(project.comparisons)
        for prompt in project.prompts:
            other, _ = add_response(prompt, terse, "Fine. Next.", session=session)
            comparison, _ = add_comparison(project.responses[(prompt.id, "warm")], other, session=session,
                                           judgments_required=3)
            comparisons.append(comparison)
        clin0, clin1 = project.clinicians
        for i, comparison in enumerate(comparisons):
            add_judgment(comparison, clin0, CLIN0[i], session=session, strength=2 if CLIN0[i] in "ab" else None)
            add_judgment(comparison, clin1, CLIN1[i], session=session, strength=2,
                         flags_a=["dismissive"] if i == 4 else [])
        good, bad = judge_annotator("good", session=session), judge_annotator("bad", session=session)
        for i, comparison in enumerate(comparisons):
            record_verdict(comparison.id, good.id, CLIN0[i], session=session, safety_concern=(i == 3),
                           confidence=0.5 if i == 2 else 0.9)
            record_verdict(comparison.id, bad.id, "b" if CLIN0[i] == "a" else "a", session=session,
                           safety_concern=False, confidence=0.99)
        session.commit()
    return [c.id for c in comparisons]


def test_gate_stands_in_reversibly_and_only_where_safe_and_confident(engine):
    ids = _gate_database(engine)
    config = AnalyticsConfig(n_bootstrap=50, min_shared_items=10)
    with Session(engine, expire_on_commit=False) as session:
        result = apply_gate("good", session=session, config=config, min_confidence=0.8)
        session.commit()
        assert result.qualifies, result.reason
        assert (result.stands_in, result.started, result.unsafe, result.unconfident) == (9, 9, 2, 1)
        assert "9 of 12 verdicts stand in" in str(result)
        bad = apply_gate("bad", session=session, config=config, min_confidence=0.5)
        session.commit()
        assert not bad.qualifies and bad.stands_in == 0
        assert "none of its 12 verdicts stand in" in str(bad)
        counts = {c.id: c.judgments_count for c in session.exec(select(Comparison))}
        # Two clinicians each + the good judge on all but the unconfident (2), unsafe (3) and flagged (4) pairs.
        assert counts == {cid: 2 if i in (2, 3, 4) else 3 for i, cid in enumerate(ids)}
        again = apply_gate("good", session=session, config=config, min_confidence=0.8)
        assert (again.stands_in, again.started, again.withdrawn) == (9, 0, 0)  # idempotent
        stricter = apply_gate("good", session=session, config=config, min_confidence=0.95)
        assert (stricter.stands_in, stricter.withdrawn) == (0, 9)
        apply_gate("good", session=session, config=config, min_confidence=0.8)
        revoked = apply_gate("good", session=session, revoke=True)
        session.commit()
        assert revoked.withdrawn == 9
        assert {c.judgments_count for c in session.exec(select(Comparison))} == {2}
        assert session.exec(select(JudgeVerdict).where(JudgeVerdict.stands_in.is_(True))).all() == []


def test_report_section_shows_known_agreement(tmp_path, engine):
    _gate_database(engine)
    with Session(engine, expire_on_commit=False) as session:
        apply_gate("good", session=session, config=AnalyticsConfig(n_bootstrap=50), min_confidence=0.8)
        session.commit()
        report = load_judges_report(session=session, config=AnalyticsConfig(n_bootstrap=50))
    clinician_kappa = _pooled_kappa(CLIN0, [CLIN1])
    assert report.clinician_kappa == pytest.approx(clinician_kappa)
    out = tmp_path / "report"
    result = runner.invoke(app, ["report", "--output", str(out), "--db", str(engine.url.database), "--bootstrap", "50"])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "report.json").read_text())
    judges = {j["judge"]: j for j in data["judges"]["judges"]}
    assert set(judges) == {"judge:good", "judge:bad"}
    good, bad = judges["judge:good"], judges["judge:bad"]
    assert good["kappa"]["value"] == pytest.approx(_pooled_kappa(CLIN0, [CLIN0, CLIN1]))
    assert bad["kappa"]["value"] == pytest.approx(_pooled_kappa(["b" if x == "a" else "a" for x in CLIN0],
                                                                [CLIN0, CLIN1]))
    assert good["kappa"]["n_items"] == 24 and good["n_shared"] == 12  # (comparison, clinician) pairs
    assert good["preference"]["percent_agreement"]["value"] == pytest.approx(22 / 24)
    assert good["kappa"]["ci_low"] <= good["kappa"]["value"] <= good["kappa"]["ci_high"]
    assert (good["qualifies"], bad["qualifies"], good["stands_in"], bad["stands_in"]) == (True, False, 9, 0)
    assert data["judges"]["clinician_mean_kappa"] == pytest.approx(clinician_kappa)
    flagged = next(f for f in good["flags"] if f["name"] == "dismissive")
    # 12 comparisons × 2 replies × 2 clinicians; one reply flagged by clin1, never by the judge: kappa 0.
    assert (flagged["pairwise_kappa"][0]["n_items"], flagged["pairwise_kappa"][0]["value"]) == (48, 0.0)
    # Everything else in the report is the clinicians' alone.
    assert data["agreement"]["n_annotators"] == 2 and data["n_annotators"] == 2
    html = (out / "report.html").read_text()
    assert ">Judges vs clinicians</h2>" in html
    assert "judge:good" in html and "Verdicts standing in" in html


# --- reward:DIR --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
    return untrained_reward_model(tmp_path_factory.mktemp("rm") / "tiny-rm")


def test_reward_model_judge(engine, reward_dir):
    from db.rules import prompt_conversation
    from reward.scoring import RewardModel

    db = engine.url.database
    with Session(engine, expire_on_commit=False) as session:
        project = build_project(session, n_prompts=3, n_clinicians=1, judgments_required=2)
    result = runner.invoke(app, ["judge", "--judge", f"reward:{reward_dir}", "--db", db, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "Judge judge:reward:tiny-rm: 3 verdicts stored, 0 failed" in result.stdout
    model = RewardModel.load(str(reward_dir))
    with Session(engine) as session:
        judgments, failures = _state(session, "judge:reward:tiny-rm")
        assert failures == {} and set(judgments) == {c.id for c in project.comparisons}
        for comparison in project.comparisons:
            judgment = judgments[comparison.id]
            verdict = session.exec(select(JudgeVerdict).where(JudgeVerdict.judgment_id == judgment.id)).one()
            prompt = project.prompts[project.comparisons.index(comparison)]
            from db.models import Response
            a, b = session.get(Response, comparison.response_a_id), session.get(Response, comparison.response_b_id)
            score_a = model.score(prompt_conversation(prompt), a.text)
            score_b = model.score(prompt_conversation(prompt), b.text)
            p = 1 / (1 + math.exp(-(score_a - score_b)))
            assert verdict.details["score_a"] == pytest.approx(score_a, abs=1e-4)
            assert verdict.confidence == pytest.approx(abs(2 * p - 1), abs=1e-4)
            assert judgment.preferred == ("a" if p > 0.5 else "b")
            assert verdict.safety_concern is None  # no safety opinion
    bad = runner.invoke(app, ["judge", "--judge", f"reward:{reward_dir.parent / 'missing'}", "--db", db])
    assert bad.exit_code == 1 and "not a reward model folder" in bad.output


# --- Judges never count as clinicians unless asked ----------------------------------------------------

def test_judge_judgments_excluded_from_clinicians_exports_and_training(tmp_path, engine):
    from exports.filters import ExportFilters
    from exports.run import run_export
    from reward.data import pairs_from_db

    with Session(engine, expire_on_commit=False) as session:
        project = build_project(session, n_prompts=4, n_clinicians=1, judgments_required=2)
        clinician = project.clinicians[0]
        judge = judge_annotator("gpt-x", session=session)
        for i, comparison in enumerate(project.comparisons):
            if i < 2:
                add_judgment(comparison, clinician, "a", session=session, strength=2)
            record_verdict(comparison.id, judge.id, "b", session=session, confidence=0.9, safety_concern=False)
        session.commit()
        clinicians, _ = pairs_from_db(session=session, sources="clinicians")
        judges, _ = pairs_from_db(session=session, sources="judges")
        named, _ = pairs_from_db(session=session, sources="judge:gpt-x")
        both, _ = pairs_from_db(session=session, sources="both")
        everyone, _ = pairs_from_db(session=session, sources="all")
    assert {p.source for p in clinicians} == {"clinicians"} and len(clinicians) == 2
    assert {p.source for p in judges} == {"judge:gpt-x"} and len(judges) == 4
    assert len(named) == 4 and len(both) == 2 and len(everyone) == 6

    def dpo(sources: str) -> list[dict]:
        path = tmp_path / f"{sources.replace(':', '_')}.jsonl"
        run_export("dpo", path, engine=engine, filters=ExportFilters(sources=sources))
        return [json.loads(line) for line in path.read_text().splitlines()]

    assert len(dpo("clinicians")) == 2 and len(dpo("both")) == 2
    judged = dpo("judges")
    assert len(judged) == 4 and len(dpo("judge:gpt-x")) == 4
    assert all(row["chosen"][0]["content"] == "Okay." for row in judged)  # the judge preferred the terse reply
    from exports.errors import ExportError
    with pytest.raises(ExportError, match="no judge named 'judge:nobody'"):
        dpo("judge:nobody")


def test_analytics_count_judges_only_under_all(engine):
    """`report --judges imported` means datasets: a model judge's verdicts count only under `all`."""
    from analytics.records import load_judgments
    from analytics.reward_eval import majority_items
    from db.crud import get_or_create_source_annotator

    with Session(engine) as session:
        project = build_project(session, n_prompts=2, n_clinicians=1)
        dataset = get_or_create_source_annotator("hh", session=session)
        judge = get_or_create_source_annotator("judge:m", session=session)
        add_judgment(project.comparisons[0], dataset, "a", session=session)
        add_judgment(project.comparisons[1], judge, "b", session=session)
        session.commit()
        imported = AnalyticsConfig(judges="imported").sources
        assert [r.annotator for r in load_judgments(session=session, sources=imported)] == ["import:hh"]
        assert {r.annotator for r in load_judgments(session=session, sources=Sources.parse("imported,judges"))} == \
            {"import:hh", "judge:m"}
        assert [r.annotator for r in load_judgments(session=session, sources=Sources.parse("judge:m"))] == ["judge:m"]
        assert [i.comparison_id for i in majority_items(session=session, sources=imported)] == \
            [project.comparisons[0].id]


def test_cli_export_takes_judge_sources(tmp_path):
    url = f"sqlite:///{tmp_path / 'j.db'}"
    from db.engine import make_engine
    from db.migrate import upgrade

    engine = make_engine(url)
    upgrade(engine)
    with Session(engine) as session:
        project = build_project(session, n_prompts=3, n_clinicians=1)
        judge = judge_annotator("gpt-x", session=session)
        for comparison in project.comparisons:
            record_verdict(comparison.id, judge.id, "b", session=session, confidence=0.9, safety_concern=False)
        session.commit()
    out = tmp_path / "judged.jsonl"
    result = runner.invoke(app, ["export", "dpo", "--output", str(out), "--sources", "judge:gpt-x", "--db", url])
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 3
    bad = runner.invoke(app, ["export", "dpo", "--output", str(tmp_path / "x.jsonl"), "--sources", "judge:nobody",
                              "--db", url])
    assert bad.exit_code != 0 and "no judge named 'judge:nobody'" in bad.output
    assert not (tmp_path / "x.jsonl").exists()
