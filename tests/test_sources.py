"""``db.rules.Sources``: one parsed ``--sources`` value whose Python rule and SQL term agree, on SQLite and
PostgreSQL, and that every area reads (reward pairs, exports, analytics, the A/B table)."""

from __future__ import annotations

import pytest
from sqlmodel import Session, select

from db.auth import create_annotator
from db.crud import get_or_create_source_annotator
from db.errors import SourcesError, TheraPrefError
from db.models import Annotator
from db.rules import Sources
from tests.factories import PASSWORD

VALUES = ["clinicians", "imported", "both", "judges", "all", "judge:m", "import:hh", "clinicians, judge:m",
          "imported,judges", ["clinicians", "import:hh"]]


def test_python_rule_and_sql_term_pick_the_same_annotators(any_engine):
    with Session(any_engine) as session:
        create_annotator("dr.lee", PASSWORD, session=session)
        create_annotator("lead", PASSWORD, session=session, role="admin")
        for name in ("hh", "other", "judge:m", "judge:x"):
            get_or_create_source_annotator(name, session=session)
        session.commit()
        rows = session.exec(select(Annotator.username, Annotator.role)).all()
        for value in VALUES:
            sources = Sources.parse(value)
            in_sql = set(session.exec(select(Annotator.username).where(sources.condition())).all())
            in_python = {name for name, role in rows if sources.includes(role, name)}
            assert in_sql == in_python, value
    picked = {str(v): {n for n, r in rows if Sources.parse(v).includes(r, n)} for v in VALUES}
    assert picked["clinicians"] == {"dr.lee", "lead"}
    assert picked["imported"] == {"import:hh", "import:other"}  # never a model judge
    assert picked["both"] == {"dr.lee", "lead", "import:hh", "import:other"}
    assert picked["judges"] == {"judge:m", "judge:x"}
    assert picked["judge:m"] == {"judge:m"} and picked["import:hh"] == {"import:hh"}
    assert picked["all"] == {name for name, _ in rows}
    assert picked["clinicians, judge:m"] == {"dr.lee", "lead", "judge:m"}


@pytest.mark.parametrize("bad", ["clinician", "", "clinicians,,judges", "judge:", "hh", "robots:x"])
def test_a_bad_value_is_one_clear_error(bad):
    with pytest.raises(SourcesError) as caught:
        Sources.parse(bad)
    assert isinstance(caught.value, TheraPrefError) and "\n" not in str(caught.value)
    assert str(caught.value).startswith(f"--sources {bad.strip()!r}: not clinicians, imported, both, judges, all")


def test_every_area_reads_the_one_rule():
    """A bad value fails the same way in reward training, exports and analytics settings."""
    from analytics.config import AnalyticsConfig
    from analytics.errors import AnalyticsError
    from exports.filters import ExportFilters
    from reward.pairs import Vote, build_pairs

    with pytest.raises(SourcesError, match="--sources 'judge'"):
        build_pairs([], sources="judge")
    with pytest.raises(SourcesError, match="--sources 'everyone'"):
        ExportFilters(sources="everyone").parsed_sources  # noqa: B018
    with pytest.raises(AnalyticsError, match="--judges 'robots'"):
        AnalyticsConfig(judges="robots")
    votes = [Vote(1, "p", (), "x", "y", "a", 1, 2, annotator="dr.lee"),
             Vote(2, "p", (), "x", "y", "a", 3, 4, annotator="import:hh", role="source"),
             Vote(3, "p", (), "x", "y", "a", 5, 6, annotator="judge:m", role="source")]
    for value in ("clinicians", "imported", "both", "judges", "all", "judge:m"):
        kept = {p.comparison_id for p in build_pairs(votes, sources=value)[0]}
        assert kept == {v.comparison_id for v in votes if Sources.parse(value).includes(v.role, v.annotator)}
