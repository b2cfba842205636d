"""Shared fixtures: real SQLite files, a real PostgreSQL server, small real databases, a tiny Llama."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from db.engine import make_engine
from db.migrate import upgrade

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
GABY = SHARED_DATA / "gaby_sft_sample.jsonl"
COUNSEL_CHAT = SHARED_DATA / "counsel_chat.csv"
DIALOGFLOW = SHARED_DATA / "dialogflow_augmend.zip"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.pop("THERAPREF_DATABASE_URL", None)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert SHARED_DATA.is_dir(), f"shared data missing at {SHARED_DATA}"
    return SHARED_DATA


@pytest.fixture(scope="session")
def postgres_server():
    from tests.pg import PostgresServer

    server = PostgresServer().start()
    yield server
    server.stop()


_db_counter = itertools.count()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'therapref.db'}"


@pytest.fixture
def postgres_url(postgres_server) -> str:
    return postgres_server.create_database(f"t{os.getpid()}_{next(_db_counter)}")


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db_url(request) -> str:
    """The URL of an empty database (not yet migrated), once a SQLite file and once on a real PostgreSQL
    server."""
    return request.getfixturevalue({"sqlite": "sqlite_url", "postgresql": "postgres_url"}[request.param])


def _migrated_engine(url: str) -> Iterator[Engine]:
    engine = make_engine(url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def engine(sqlite_url):
    """A migrated SQLite file database."""
    yield from _migrated_engine(sqlite_url)


@pytest.fixture
def any_engine(any_db_url):
    """A migrated database, once on SQLite and once on PostgreSQL."""
    yield from _migrated_engine(any_db_url)


@pytest.fixture
def session(engine):
    with Session(engine, expire_on_commit=False) as session:
        yield session


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """``tests.tiny_models.tiny_llama``, built once per session (a policy base and a decoder reward base)."""
    from tests.tiny_models import tiny_llama as build

    return build(tmp_path_factory.mktemp("tiny-llama"))

