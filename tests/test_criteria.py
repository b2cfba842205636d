"""Per-criterion judgments (issue 16): the schema and its migration, submitting verdicts with a
judgment, per-criterion agreement / Bradley–Terry / "the overall winner is worse on safety",
``--not-worse-on`` exports (and the file still trains a TRL step), and reward pairs per criterion."""

from __future__ import annotations

import json
import math

import pytest
from sqlalchemy import func, inspect, select, text
from sqlmodel import Session
from typer.testing import CliRunner

from analytics.config import AnalyticsConfig
from analytics.criteria import (
    build_criteria_report,
    criterion_agreement,
    criterion_battles,
    fleiss_from_counts,
    winner_worse_on,
)
from analytics.leaderboard import battles_from_records, fit_leaderboard
from analytics.records import JudgmentRecord
from db.assignment import AssignmentError, ensure_guidelines, next_comparison, submit_judgment, undo_last
from db.criteria import (
    DEFAULT_CRITERIA,
    CriterionSpec,
    add_verdicts,
    current_criteria,
    publish_guidelines,
    read_criteria_file,
    verdicts_of,
)
from db.crud import DataError, add_comparison, add_judgment, add_response, get_or_create_candidate, get_or_create_prompt
from db.engine import make_engine, session_scope
from db.migrate import alembic_config, current_revision, head_revision, upgrade
from db.models import Annotator, Criterion, CriterionVerdict, Judgment, Reservation
from db.status import table_counts
from exports.errors import ExportError
from exports.filters import ExportFilters
from exports.run import run_export
from tests.factories import build_project, user
from therapref.cli import app

pytestmark = pytest.mark.postgres

CRITERIA = [CriterionSpec("empathy", "Reflects feelings."), CriterionSpec("safety", "Handles risk.", required=True),
            CriterionSpec("helpfulness", "One next step.")]


def _publish(session: Session, criteria=CRITERIA) -> None:
    publish_guidelines("Rubric with criteria.", criteria=criteria, session=session)


# --- Schema, migration ------------------------------------------------------------------------


def test_migration_0006_down_and_up_with_judgments_and_verdicts(any_db_url):
    """Judgments survive a downgrade to 0005 (verdicts and criteria go with their tables) and an
    upgrade back; new verdicts can be written afterwards."""
    from alembic import command

    engine = make_engine(any_db_url)
    upgrade(engine)
    with Session(engine, expire_on_commit=False) as session:
        project = build_project(session, n_prompts=3, n_clinicians=2, with_judgments=True)
        _publish(session)
        judgments = session.execute(select(Judgment.id).order_by(Judgment.id)).scalars().all()
        for jid in judgments:
            add_verdicts(jid, {"safety": "a", "empathy": "tie"}, session=session)
        session.commit()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM criterionverdict")).scalar() == 2 * len(judgments)
        before = conn.execute(text("SELECT id, comparison_id, annotator_id, preferred FROM judgment ORDER BY id")).all()

    command.downgrade(alembic_config(engine), "0005")
    assert current_revision(engine) == "0005"
    tables = set(inspect(engine).get_table_names())
    assert "criterion" not in tables and "criterionverdict" not in tables
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id, comparison_id, annotator_id, preferred FROM judgment ORDER BY id")
                            ).all() == before

    assert upgrade(engine) == head_revision()
    with Session(engine, expire_on_commit=False) as session:
        assert session.execute(select(func.count(CriterionVerdict.id))).scalar_one() == 0
        assert [tuple(r) for r in session.execute(
            select(Judgment.id, Judgment.comparison_id, Judgment.annotator_id, Judgment.preferred).order_by(Judgment.id)
        )] == [tuple(r) for r in before]
        _publish(session)
        add_verdicts(judgments[0], {"safety": "b"}, session=session)
        session.commit()
        assert verdicts_of(judgments[0], session=session) == {"safety": "b"}
        assert [c.name for c in current_criteria(session=session)] == ["empathy", "safety", "helpfulness"]
    assert project.comparisons
    engine.dispose()


def test_new_databases_get_the_default_clinical_criteria(any_engine):
    with session_scope(any_engine) as session:
        version = ensure_guidelines(session=session)
        names = [c.name for c in current_criteria(session=session)]
        assert version.version == 1
    assert names == ["empathy", "safety", "helpfulness", "boundaries", "accuracy"]
    assert names == [c.name for c in DEFAULT_CRITERIA]


def test_publishing_criteria_versions_them_and_refuses_bad_ones(any_engine, tmp_path):
    with session_scope(any_engine) as session:
        ensure_guidelines(session=session)
        v2 = publish_guidelines("Text v2", criteria=CRITERIA, session=session)
        v3 = publish_guidelines("Text v3", session=session)  # criteria carried over
        assert [c.name for c in current_criteria(session=session)] == ["empathy", "safety", "helpfulness"]
        assert (v2.version, v3.version) == (2, 3)
    with session_scope(any_engine) as session:
        before = table_counts(session=session)
    with pytest.raises(DataError, match="criterion 2: name 'safety' appears twice"), \
            session_scope(any_engine) as session:
        publish_guidelines("Text v4", criteria=[CriterionSpec("safety"), CriterionSpec("safety")], session=session)
    with session_scope(any_engine) as session:
        assert table_counts(session=session) == before
    good = tmp_path / "criteria.toml"
    good.write_text('[[criteria]]\nname = "safety"\ndescription = "Risk."\nrequired = true\n')
    assert read_criteria_file(good) == [CriterionSpec("safety", "Risk.", True)]
    bad = tmp_path / "bad.toml"
    bad.write_text('[[criteria]]\nname = "Safety"\n')
    with pytest.raises(DataError, match=r"bad.toml: criterion 1: name 'Safety' must be lower-case"):
        read_criteria_file(bad)


# --- Submitting verdicts -----------------------------------------------------------------------


def test_submit_with_verdicts_canonical_required_idempotent_and_undone(any_engine):
    with Session(any_engine, expire_on_commit=False) as session:
        project = build_project(session, n_prompts=2, n_clinicians=1)
        _publish(session)
        session.commit()
    clinician = project.clinicians[0].id
    with session_scope(any_engine) as session:
        assignment = next_comparison(clinician, session=session)
    token = assignment.token
    with session_scope(any_engine) as session:
        before = table_counts(session=session)
    # Safety is required: refused with one clear line, nothing written, the pair still reserved.
    with pytest.raises(AssignmentError, match="^judge every required criterion: safety$"), \
            session_scope(any_engine) as session:
        submit_judgment(token, session=session, annotator_id=clinician, preferred="left", strength=2,
                        criteria={"empathy": "left", "safety": None})
    with pytest.raises(AssignmentError, match="unknown criterion 'kindness'"), session_scope(any_engine) as session:
        submit_judgment(token, session=session, annotator_id=clinician, preferred="left", strength=2,
                        criteria={"safety": "tie", "kindness": "left"})
    with session_scope(any_engine) as session:
        assert table_counts(session=session) == before
        assert session.execute(select(Reservation.token)).scalars().all() == [token]
    with session_scope(any_engine) as session:
        judgment, created = submit_judgment(token, session=session, annotator_id=clinician, preferred="left",
                                            strength=2, criteria={"empathy": "left", "safety": "right",
                                                                  "helpfulness": None})
    left, right = assignment.shown_left, "b" if assignment.shown_left == "a" else "a"
    assert created and judgment.preferred == left
    with session_scope(any_engine) as session:
        assert verdicts_of(judgment.id, session=session) == {"empathy": left, "safety": right}
        again, created_again = submit_judgment(token, session=session, annotator_id=clinician, preferred="left",
                                               strength=2, criteria={"empathy": "tie", "safety": "tie"})
    assert (again.id, created_again) == (judgment.id, False)
    with session_scope(any_engine) as session:
        assert verdicts_of(judgment.id, session=session) == {"empathy": left, "safety": right}
        assert session.execute(select(func.count(CriterionVerdict.id))).scalar_one() == 2
    # An undo deletes the judgment and, with it, its verdicts (ON DELETE CASCADE).
    with session_scope(any_engine) as session:
        assert undo_last(clinician, session=session)
    with session_scope(any_engine) as session:
        assert session.execute(select(func.count(CriterionVerdict.id))).scalar_one() == 0


# --- Analytics ---------------------------------------------------------------------------------


def _records(rows):
    """(comparison, annotator, preferred, judgment id, model a, model b) → records."""
    return [JudgmentRecord(c, who, pref, judgment_id=jid, model_a=ma, model_b=mb) for c, who, pref, jid, ma, mb in rows]


def test_per_criterion_agreement_matches_a_hand_computation():
    """Three comparisons, two annotators, safety verdicts (x, y): (a, a), (a, b), (b, b).

    Krippendorff (nominal): pairable values n = 6, n_a = n_b = 3; coincidences o_aa = 2, o_ab = o_ba = 1,
    o_bb = 2; alpha = 1 − (n − 1)·Σo_ab·δ / Σ n_c·n_k·δ = 1 − 5·2 / (3·3·2) = 4/9.
    Fleiss: per-unit agreement 1, 0, 1 → P̄ = 2/3; shares 1/2, 1/2 → P_e = 1/2; kappa = (2/3 − 1/2)/(1/2) = 1/3.
    Cohen (x vs y): p_o = 2/3, p_e = (2/3)(1/3) + (1/3)(2/3) = 4/9; kappa = (2/9)/(5/9) = 0.4.
    The overall preference (all "a") plays no part.
    """
    records = _records([(1, "x", "a", 1, "m1", "m2"), (1, "y", "a", 2, "m1", "m2"),
                        (2, "x", "a", 3, "m1", "m2"), (2, "y", "a", 4, "m1", "m2"),
                        (3, "x", "a", 5, "m1", "m2"), (3, "y", "a", 6, "m1", "m2")])
    verdicts = {1: {"safety": "a"}, 2: {"safety": "a"}, 3: {"safety": "a"}, 4: {"safety": "b"},
                5: {"safety": "b"}, 6: {"safety": "b", "empathy": "a"}}
    result = criterion_agreement(records, verdicts, "safety", min_shared_items=1, n_bootstrap=200)
    assert result.block.alpha.value == pytest.approx(4 / 9)
    assert result.fleiss.value == pytest.approx(1 / 3)
    assert [k.kappa.value for k in result.block.kappas] == [pytest.approx(0.4)]
    assert result.block.alpha.n_items == 3
    assert result.block.alpha.low <= 4 / 9 <= result.block.alpha.high
    assert fleiss_from_counts([[2, 0, 0], [2, 0, 0]]) != fleiss_from_counts([[2, 0, 0], [0, 2, 0]])
    # Empathy has one verdict only: nothing to agree on.
    assert math.isnan(criterion_agreement(records, verdicts, "empathy", n_bootstrap=0).block.alpha.value)


def test_bradley_terry_per_criterion_and_winner_worse_on_safety():
    """m1 wins the overall preference every time, but m2 is safer in 4 of the 6 judgments."""
    rows, verdicts = [], {}
    safety = ["b", "b", "b", "b", "tie", "a"]
    for i, verdict in enumerate(safety):
        rows.append((i // 2, f"c{i % 2}", "a", i + 1, "m1", "m2"))
        verdicts[i + 1] = {"safety": verdict, "empathy": "a"}
    rows.append((9, "c0", "tie", 99, "m1", "m2"))  # a tie overall: no winner to lose
    verdicts[99] = {"safety": "b"}
    records = _records(rows)
    overall = fit_leaderboard(battles_from_records(records), n_bootstrap=50)
    on_safety = fit_leaderboard(criterion_battles(records, verdicts, "safety"), n_bootstrap=50)
    on_empathy = fit_leaderboard(criterion_battles(records, verdicts, "empathy"), n_bootstrap=50)
    assert overall.ratings[0].model == "m1"
    assert on_safety.ratings[0].model == "m2"
    assert (on_safety.ratings[0].wins, on_safety.ratings[0].ties, on_safety.ratings[0].losses) == (5, 1, 1)
    assert on_empathy.ratings[0].model == "m1" and on_empathy.n_battles == 6
    worse = winner_worse_on(records, verdicts, "safety")
    assert (worse.value, worse.n_items) == (pytest.approx(4 / 6), 6)
    assert 0 < worse.low < 4 / 6 < worse.high < 1
    assert winner_worse_on(records, verdicts, "empathy").value == 0.0


def test_criteria_report_from_the_database_and_in_the_report_files(engine, tmp_path):
    from analytics.report import generate_report

    with Session(engine, expire_on_commit=False) as session:
        project = build_project(session, n_prompts=3, n_clinicians=2, with_judgments=True)
        _publish(session)
        # Every clinician prefers the warm reply; on safety one judgment names the terse one.
        ids = session.execute(select(Judgment.id, Judgment.preferred).order_by(Judgment.id)).all()
        for n, (jid, preferred) in enumerate(ids):
            other = "b" if preferred == "a" else "a"
            add_verdicts(jid, {"safety": other if n == 0 else preferred}, session=session)
        session.commit()
        report = build_criteria_report(session=session, config=AnalyticsConfig(n_bootstrap=50))
    assert report.criteria == ["safety"]
    assert report.n_judgments == 6
    worse = report.winner_worse["safety"]
    assert (worse.value, worse.n_items) == (pytest.approx(1 / 6), 6)
    assert report.leaderboards["safety"].ratings[0].model == "warm"
    assert sum(report.verdict_counts["safety"].values()) == 6 and report.verdict_counts["safety"]["tie"] == 0
    _summary, files = generate_report(tmp_path / "rep", session=Session(engine),
                                      config=AnalyticsConfig(n_bootstrap=20))
    markdown = files.markdown.read_text()
    assert "## Criteria" in markdown
    assert "worse one on safety in 17% of 6 judgments" in markdown
    data = json.loads(files.json.read_text())
    assert data["criteria"]["overall_winner_worse_on"]["safety"]["n_items"] == 6
    assert project.comparisons


# --- Exports: --not-worse-on ----------------------------------------------------------------------


def _export_db(engine) -> dict[str, int]:
    """Seven prompts, one comparison each (W = warm, T = terse); clinicians c0–c2. Overall votes and
    safety verdicts per comparison, by side (W/T), and what ``--not-worse-on safety`` does to the pair:

    - P1: W 2–0, safety T, T            → W worse on safety: dropped
    - P2: W 2–0, safety W, tie          → kept
    - P3: T 2–1, safety W, T (level)    → kept (no plurality)
    - P4: W 1–0, no safety verdict      → kept
    - P5: W 2–0, safety tie, tie        → kept (a plurality of ties)
    - P6: T 2–0, safety W, W, + tie      → T worse: dropped
    - P7: W 2–0, safety W, but c2 flags W → dropped as chosen_flagged (with or without the filter)
    """
    with Session(engine, expire_on_commit=False) as session:
        _publish(session)
        warm, _ = get_or_create_candidate("warm", session=session, provider="local")
        terse, _ = get_or_create_candidate("terse", session=session, provider="local")
        clin = [Annotator(username=f"c{i}", role="clinician") for i in range(3)]
        session.add_all(clin)
        session.flush()
        plan = {
            "P1": ([("c0", "W", "T"), ("c1", "W", "T")], None),
            "P2": ([("c0", "W", "W"), ("c1", "W", "tie")], None),
            "P3": ([("c0", "T", "W"), ("c1", "T", "T"), ("c2", "W", None)], None),
            "P4": ([("c0", "W", None)], None),
            "P5": ([("c0", "W", "tie"), ("c1", "W", "tie")], None),
            "P6": ([("c0", "T", "W"), ("c1", "T", "W"), ("c2", "tie", "tie")], None),
            "P7": ([("c0", "W", "W"), ("c1", "W", "W"), ("c2", "tie", None)], "W"),
        }
        who = {a.username: a for a in clin}
        comparisons = {}
        for key, (votes, flagged) in plan.items():
            prompt, _ = get_or_create_prompt(user(f"Patient message {key}."), session=session, source="test")
            w, _ = add_response(prompt, warm, f"Warm reply {key}: that sounds hard, tell me more.", session=session)
            t, _ = add_response(prompt, terse, f"Terse reply {key}.", session=session)
            comparison, _ = add_comparison(w, t, session=session)
            side = {"W": "a" if comparison.response_a_id == w.id else "b",
                    "T": "a" if comparison.response_a_id == t.id else "b", "tie": "tie"}
            for name, pref, safety in votes:
                flags = {}
                if flagged and name == "c2":
                    flags = {"flags_a" if side[flagged] == "a" else "flags_b": ["harmful_advice"]}
                judgment, _ = add_judgment(comparison, who[name], side[pref], session=session,
                                           strength=2 if pref != "tie" else None, **flags)
                if safety is not None:
                    add_verdicts(judgment.id, {"safety": side[safety]}, session=session)
            comparisons[key] = comparison.id
        session.commit()
    return comparisons


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_not_worse_on_safety_drops_exactly_the_pairs_it_should(engine, tmp_path):
    _export_db(engine)
    plain = run_export("dpo", tmp_path / "all.jsonl", engine=engine)
    assert plain.rows == 6 and plain.counts["dropped"] == {"chosen_flagged": 1}
    safe = run_export("dpo", tmp_path / "safe.jsonl", engine=engine, filters=ExportFilters(not_worse_on="safety"))
    assert safe.rows == 4
    assert safe.counts["dropped"] == {"chosen_flagged": 1, "worse_on_criterion": 2}
    chosen = sorted(r["chosen"][0]["content"].split(":")[0] for r in _rows(tmp_path / "safe.jsonl"))
    assert chosen == ["Terse reply P3.", "Warm reply P2", "Warm reply P4", "Warm reply P5"]
    manifest = json.loads((tmp_path / "safe.jsonl.manifest.json").read_text())
    assert manifest["filters"]["not_worse_on"] == "safety"
    # SFT: the prompt's preferred reply must not be the worse one on safety either.
    sft = run_export("sft", tmp_path / "sft.jsonl", engine=engine, filters=ExportFilters(not_worse_on="safety"))
    targets = sorted(r["messages"][-1]["content"].split(":")[0] for r in _rows(tmp_path / "sft.jsonl"))
    assert targets == ["Terse reply P3.", "Warm reply P2", "Warm reply P4", "Warm reply P5"]
    assert sft.rows == 4
    # KTO: a reply worse on safety is never desirable (its undesirable labels stay).
    run_export("kto", tmp_path / "kto.jsonl", engine=engine, filters=ExportFilters(not_worse_on="safety"))
    desirable = {r["completion"][0]["content"].split(":")[0] for r in _rows(tmp_path / "kto.jsonl") if r["label"]}
    assert "Warm reply P1" not in desirable and "Terse reply P6." not in desirable
    assert "Warm reply P2" in desirable
    with pytest.raises(ExportError, match=r"--not-worse-on: unknown criterion 'kindness' \(known: "
                                          r"empathy, helpfulness, safety\)"):
        run_export("dpo", tmp_path / "x.jsonl", engine=engine, filters=ExportFilters(not_worse_on="kindness"))
    assert not (tmp_path / "x.jsonl").exists()


def test_not_worse_on_through_the_cli_and_the_file_trains_one_trl_step(tmp_path):
    url = f"sqlite:///{tmp_path / 'tp.db'}"
    engine = make_engine(url)
    upgrade(engine)
    _export_db(engine)
    out = tmp_path / "dpo.jsonl"
    result = CliRunner().invoke(app, ["export", "dpo", "--db", url, "--output", str(out),
                                      "--not-worse-on", "safety"])
    assert result.exit_code == 0, result.output
    assert "Wrote 4 dpo rows" in result.output and "worse_on_criterion 2" in result.output
    bad = CliRunner().invoke(app, ["export", "dpo", "--db", url, "--output", str(tmp_path / "b.jsonl"),
                                   "--not-worse-on", "kindness"])
    assert bad.exit_code == 1 and "unknown criterion 'kindness'" in bad.output

    import torch
    from datasets import load_dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from candidates.embedded import smollm2_hf_path

    dataset = load_dataset("json", data_files=str(out), split="train")
    assert dataset.num_rows == 4
    path = str(smollm2_hf_path())
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(path)
    scorer = AutoModelForSequenceClassification.from_pretrained(path, dtype="float32", num_labels=1)
    scorer.config.pad_token_id = tokenizer.pad_token_id
    head = scorer.score.weight.detach().clone()
    # 256 tokens: these prompts have no system message, so SmolLM2's template adds its own default
    # one, and TRL's RewardTrainer drops (rather than truncates) pairs longer than max_length.
    args = RewardConfig(output_dir=str(tmp_path / "rm"), max_steps=1, per_device_train_batch_size=1,
                        learning_rate=1e-5, report_to=[], save_strategy="no", logging_steps=1, bf16=False,
                        use_cpu=True, max_length=256, disable_tqdm=True, gradient_checkpointing=False)
    trainer = RewardTrainer(model=scorer, args=args, train_dataset=dataset, processing_class=tokenizer)
    assert trainer.train().global_step == 1
    assert not torch.equal(head, scorer.score.weight.detach())
    engine.dispose()


# --- Reward pairs and training per criterion --------------------------------------------------------


def test_train_on_the_safety_criterion(engine, tmp_path):
    """Pairs come from safety verdicts (not the overall preference): P1 and P6 flip, P3 and P7's
    verdicts give pairs of their own; ties and judgments without a verdict give none."""
    from reward.config import load_config
    from reward.data import pairs_from_db
    from reward.errors import RewardError
    from reward.train import train_reward_model

    _export_db(engine)
    config = load_config(output_dir=str(tmp_path / "rm"), criterion="safety", max_steps=1, max_length=64,
                         per_device_train_batch_size=4, eval_fraction=0.25, save_strategy="no", logging_steps=1)
    with session_scope(engine) as session:
        pairs, stats = pairs_from_db(session=session, criterion=config.criterion)
        overall, _ = pairs_from_db(session=session)
    # Safety verdicts: P1 T,T; P2 W,tie; P3 W,T; P5 tie,tie; P6 W,W,tie; P7 W,W (W flagged by c2: never chosen).
    chosen = sorted(p.chosen.split(":")[0] for p in pairs)
    assert chosen == ["Terse reply P1.", "Terse reply P1.", "Terse reply P3.", "Warm reply P2", "Warm reply P3",
                      "Warm reply P6", "Warm reply P6"]
    assert (stats.pairs, stats.ties, stats.unsafe_chosen, stats.no_criterion_verdict) == (7, 4, 2, 3)
    assert all(p.margin == 0.0 for p in pairs)
    assert sorted(p.chosen.split(":")[0] for p in overall) != chosen
    result = train_reward_model(config, pairs, pair_stats=stats)
    assert result.n_train + result.n_eval == 7
    assert result.n_eval > 0
    with pytest.raises(RewardError, match=r"unknown criterion 'kindness' \(known: empathy, helpfulness, safety\)"), \
            session_scope(engine) as session:
        pairs_from_db(session=session, criterion="kindness")
    assert load_config(output_dir=str(tmp_path / "x")).criterion is None


def test_criterion_rows_are_unique_per_version(engine):
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError), session_scope(engine) as session:
        version = ensure_guidelines(session=session)
        session.add(Criterion(guideline_version_id=version.id, name="safety"))
        session.flush()


def test_cli_train_criterion_uses_the_criterion_pairs(tmp_path):
    """`therapref train --criterion safety` trains on the seven safety pairs, not the overall ones."""
    from db.models import RewardModelRun

    url = f"sqlite:///{tmp_path / 'crit.db'}"
    engine = make_engine(url)
    upgrade(engine)
    _export_db(engine)
    result = CliRunner().invoke(app, ["train", "--db", url, "--output", str(tmp_path / "rm"), "--criterion", "safety",
                                      "--max-steps", "1", "--max-length", "64", "--batch-size", "4",
                                      "--eval-fraction", "0.25"])
    assert result.exit_code == 0, result.output
    with Session(engine) as session:
        run = session.exec(select(RewardModelRun)).scalars().one()
    assert run.n_train + run.n_eval == 7
    assert run.config["criterion"] == "safety"
