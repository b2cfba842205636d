"""Golden tests per export format on a hand-built database; filters, provenance, PII scrubbing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlmodel import Session, select

from db.models import AuditEvent, ExportRun
from db.status import database_fingerprint
from exports.errors import ExportError
from exports.filters import ExportFilters, parse_when
from exports.formats import read_manifest
from exports.run import ExportOptions, run_export
from tests.conftest import GABY
from tests.export_helpers import asst, conv
from tests.factories import SYSTEM, build_scenario


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def scenario(engine):
    with Session(engine, expire_on_commit=False) as session:
        return build_scenario(session)


def export(engine, kind, path, **kw):
    filters = ExportFilters(**{k: v for k, v in kw.items() if k in ExportFilters.__dataclass_fields__})
    options = ExportOptions(**{k: v for k, v in kw.items() if k in ExportOptions.__dataclass_fields__})
    return run_export(kind, path, engine=engine, filters=filters, options=options)


def expected_dpo(sc):
    return [
        {"prompt": conv(sc, "P1"), "chosen": asst(sc.texts["W1"]), "rejected": asst(sc.texts["T1"]), "margin": 0.3333},
        {"prompt": conv(sc, "P2", None), "chosen": asst(sc.texts["W2"]), "rejected": asst(sc.texts["T2"]),
         "margin": 0.5},
    ]


def test_dpo_golden_manifest_and_provenance(engine, scenario, tmp_path):
    out = tmp_path / "dpo.jsonl"
    result = export(engine, "dpo", out, command=["therapref", "export", "dpo"])
    assert lines(out) == expected_dpo(scenario)
    # Flagged K1 won its comparison 3-0 but is never a chosen reply; every drop has a reason.
    assert result.counts["dropped"] == {"both_bad": 1, "chosen_flagged": 1, "no_judgments": 1, "no_majority": 1}
    assert (result.counts["in"], result.counts["out"]) == (6, 2)
    manifest = read_manifest(out.with_name("dpo.jsonl.manifest.json"))
    with Session(engine) as session:
        assert manifest["database_fingerprint"] == database_fingerprint(session=session)
        run = session.exec(select(ExportRun)).one()
        event = session.exec(select(AuditEvent).where(AuditEvent.action == "export.write")).one()
    assert manifest["command"] == ["therapref", "export", "dpo"]
    assert manifest["counts"]["judgments"]["judgments_total"] == 14
    assert manifest["filters"]["sources"] == "clinicians"
    assert manifest["tool_version"]
    assert manifest["rows"] == 2
    assert len(manifest["sha256"]) == 64
    assert run.kind == "dpo"
    assert run.counts["out"] == 2
    assert run.id == manifest["export_run_id"]
    assert event.details["export_run_id"] == run.id


def test_openai_dpo_golden(engine, scenario, tmp_path):
    out = tmp_path / "o.jsonl"
    export(engine, "openai-dpo", out)
    assert lines(out) == [
        {"input": {"messages": row["prompt"]}, "preferred_output": row["chosen"],
         "non_preferred_output": row["rejected"]} for row in expected_dpo(scenario)
    ]


def test_sft_golden_majority_rewrite_and_safety(engine, scenario, tmp_path):
    sc = scenario
    out = tmp_path / "sft.jsonl"
    result = export(engine, "sft", out)
    assert lines(out) == [
        {"messages": conv(sc, "P1") + asst(sc.texts["W1"])},   # K1 beat everything but is flagged
        {"messages": conv(sc, "P2", None) + asst(sc.texts["W2"])},  # no system message when none
        {"messages": conv(sc, "P3") + asst(sc.texts["REWRITE"])},   # the clinician rewrite
    ]
    assert result.counts["dropped"] == {"both_bad": 1, "no_judgments": 1}
    skip = export(engine, "sft", tmp_path / "skip.jsonl", rewrites="skip", system_prompt="Custom persona.")
    assert [row["messages"][0] for row in lines(tmp_path / "skip.jsonl")] == [
        {"role": "system", "content": "Custom persona."}] * 2
    assert skip.counts["dropped"]["below_margin"] == 1
    export(engine, "sft", tmp_path / "bt.jsonl", selection="bt")
    assert [row["messages"][-1]["content"] for row in lines(tmp_path / "bt.jsonl")] == [
        sc.texts["W1"], sc.texts["W2"], sc.texts["REWRITE"]]


def test_kto_golden(engine, scenario, tmp_path):
    sc = scenario
    out = tmp_path / "kto.jsonl"
    result = export(engine, "kto", out)
    got = [(row["completion"][0]["content"], row["label"]) for row in lines(out)]
    assert got == [(sc.texts["W1"], True), (sc.texts["T1"], False), (sc.texts["K1"], False),
                   (sc.texts["W2"], True), (sc.texts["T2"], False), (sc.texts["REWRITE"], True),
                   (sc.texts["W5"], False), (sc.texts["T5"], False)]
    assert lines(out)[0]["prompt"] == conv(sc, "P1")
    assert result.counts["dropped"] == {"no_judgments": 2, "no_majority": 2}


def test_hf_dataset_folder(engine, scenario, tmp_path):
    import datasets
    import pyarrow.parquet as pq

    out = tmp_path / "ds"
    export(engine, "hf", out)
    ds = datasets.load_from_disk(str(out / "dataset"))
    assert ds.num_rows == 2
    assert ds[0]["chosen"] == asst(scenario.texts["W1"])
    table = pq.read_table(out / "data" / "train-00000-of-00001.parquet")
    assert table.column("chosen_model").to_pylist() == ["warm", "warm"]
    assert table.column("votes").to_pylist() == [3, 2]
    card = (out / "README.md").read_text()
    assert "2 rows written from 6 comparisons" in card
    assert "chosen_flagged" in card
    assert "Licence" in card
    assert "judgments from `clinicians` (13), `import:hh` (1)" in card
    assert read_manifest(out / "manifest.json")["kind"] == "hf"


@pytest.mark.parametrize(("kw", "expected_texts", "reason"), [
    ({"sources": "imported"}, ["T4"], ("no_judgments", 5)),
    ({"sources": "both"}, ["W1", "W2", "T4"], ("no_majority", 1)),
    ({"guideline_version": 1}, ["W2"], ("no_majority", 2)),
    ({"min_agreement": 0.6}, ["W1"], ("below_agreement", 1)),
    ({"min_votes": 3}, ["W1"], ("below_min_votes", 2)),
    ({"candidate_models": ("warm", "terse")}, ["W1", "W2"], ("candidate_filtered", 1)),
    ({"since": parse_when("2000-01-01"), "until": parse_when("2999-01-01")}, ["W1", "W2"], ("no_majority", 1)),
])
def test_filters(engine, scenario, tmp_path, kw, expected_texts, reason):
    result = export(engine, "dpo", tmp_path / "f.jsonl", **kw)
    assert [row["chosen"][0]["content"] for row in lines(tmp_path / "f.jsonl")] == [
        scenario.texts[k] for k in expected_texts]
    assert result.counts["dropped"][reason[0]] == reason[1]


def test_date_filter_excludes_everything(engine, scenario, tmp_path):
    with pytest.raises(ExportError, match=r"nothing to export: 0 of 6 comparisons.*0 of 14 judgments used"):
        export(engine, "dpo", tmp_path / "none.jsonl", until=parse_when("2001-01-01"))
    assert not [p.name for p in tmp_path.iterdir() if "none" in p.name]  # no file, manifest or temp file
    with Session(engine) as session:
        assert session.exec(select(ExportRun)).all() == []


def test_scrub_pii_counts(engine, scenario, tmp_path):
    out = tmp_path / "kto.jsonl"
    result = export(engine, "kto", out, scrub_pii=True)
    text = out.read_text()
    assert "help@example.org" not in text
    assert "555-123-4567" not in text
    assert "I'm Sam" not in text
    assert "[EMAIL]" in text
    assert "[PHONE]" in text
    assert "I'm [NAME]," in text
    assert result.counts["pii_replaced"] == {"email": 1, "phone": 1, "url": 0, "name": 1}
    assert read_manifest(Path(str(out) + ".manifest.json"))["counts"]["pii_replaced"]["email"] == 1


def test_gaby_roundtrip_sft_reproduces_file(engine, tmp_path):
    """Import the Gaby file, export SFT with reference replies preferred: same lines, same bytes
    (the sample uses CRLF line ends and ASCII JSON; we write LF and UTF-8, identical for ASCII)."""
    from db.importers import import_prompts

    with Session(engine) as session:
        import_prompts(GABY, session=session)
        session.commit()
    out = tmp_path / "gaby.jsonl"
    result = export(engine, "sft", out, selection="reference")
    original = GABY.read_bytes().split(b"\r\n")[:-1]
    exported = out.read_bytes().split(b"\n")[:-1]
    assert [json.loads(x) for x in exported] == [json.loads(x) for x in original]
    assert exported == original
    assert result.rows == 40
    # The same file also passes OpenAI's format rules.
    from exports.validate import validate_file

    assert validate_file(out, "sft").examples == 40


def test_system_prompt_from_prompt_by_default(engine, scenario, tmp_path):
    export(engine, "dpo", tmp_path / "d.jsonl", margin=False)
    first = lines(tmp_path / "d.jsonl")[0]
    assert first["prompt"][0] == {"role": "system", "content": SYSTEM}
    assert "margin" not in first


def test_dpo_on_sqlite_and_postgres(any_engine, tmp_path):
    """The streaming query (server-side cursor on PostgreSQL) gives the golden rows on both."""
    with Session(any_engine, expire_on_commit=False) as session:
        sc = build_scenario(session)
    export(any_engine, "dpo", tmp_path / "dpo.jsonl", since=parse_when("2000-01-01"),
           until=parse_when("2999-12-31T23:00:00+02:00"))
    assert lines(tmp_path / "dpo.jsonl") == expected_dpo(sc)
    result = export(any_engine, "kto", tmp_path / "kto.jsonl", guideline_version=1)
    judgments = result.counts["judgments"]
    # SFT runs per-prompt queries while the prompt cursor streams (server-side on PostgreSQL).
    export(any_engine, "sft", tmp_path / "sft.jsonl")
    assert [row["messages"][-1]["content"] for row in lines(tmp_path / "sft.jsonl")] == [
        sc.texts["W1"], sc.texts["W2"], sc.texts["REWRITE"]]
    assert (judgments["dropped_source"], judgments["dropped_guideline"], judgments["judgments_used"]) == (1, 1, 12)


@pytest.mark.parametrize(("kind", "kw", "message"), [
    ("dpo", {"selection": "bt"}, "--select bt applies to sft exports only"),
    ("kto", {"prefer_source": "warm"}, "--prefer-source applies to sft exports only"),
    ("sft", {"selection": "reward"}, "--select reward needs --reward-model DIR"),
    ("sft", {"prefer_source": "nobody"}, "unknown candidate model 'nobody'"),
    ("csv", {}, "unknown export kind 'csv'"),
])
def test_option_misuse(engine, scenario, tmp_path, kind, kw, message):
    with pytest.raises(ExportError, match=message):
        export(engine, kind, tmp_path / "x.jsonl", **kw)
    assert not (tmp_path / "x.jsonl").exists()
