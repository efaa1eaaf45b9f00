"""The certificate half of the Store contract (store/base.py), run against every
implementation: kept by name as given, created once, replaced and deleted only while they
exist, refusals that change nothing, and a SQLite file only its owner can read."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from restcp.errors import Conflict, NotFound
from restcp.model import Certificate
from tests.certs import Authority
from tests.contract.conftest import SyncStore


@pytest.fixture(scope="module")
def pems() -> list[Certificate]:
    ca = Authority()
    return [
        Certificate(name, (pem := ca.issue(f"{name}.example.com")).cert, pem.key)
        for name in ("web", "api", "db")
    ]


def test_create_get_list_in_name_order(store: SyncStore, pems: list[Certificate]) -> None:
    assert store.list_certificates() == []
    for certificate in pems:
        store.create_certificate(certificate)
    assert store.list_certificates() == sorted(pems, key=lambda c: c.name)
    web = store.get_certificate("web")
    assert (web.cert, web.key) == (pems[0].cert, pems[0].key)


def test_a_name_is_created_once(store: SyncStore, pems: list[Certificate]) -> None:
    web, api = pems[0], pems[1]
    store.create_certificate(web)
    with pytest.raises(Conflict):
        store.create_certificate(Certificate("web", api.cert, api.key))
    assert store.get_certificate("web") == web


def test_replace_and_delete_only_what_exists(store: SyncStore, pems: list[Certificate]) -> None:
    web, api = pems[0], pems[1]
    with pytest.raises(NotFound):
        store.replace_certificate(web)
    with pytest.raises(NotFound):
        store.delete_certificate("web")
    with pytest.raises(NotFound):
        store.get_certificate("web")
    assert store.list_certificates() == []
    store.create_certificate(web)
    store.replace_certificate(Certificate("web", api.cert, api.key))
    assert store.get_certificate("web") == Certificate("web", api.cert, api.key)
    store.delete_certificate("web")
    assert store.list_certificates() == []
    # The name is free again.
    store.create_certificate(web)
    assert store.get_certificate("web") == web


def test_the_key_is_not_in_the_repr(pems: list[Certificate]) -> None:
    assert "PRIVATE" not in repr(pems[0])
    assert pems[0].key.strip() not in repr(pems[0])


def test_durable(durable_url: str, open_url: Callable[[str], SyncStore], pems: list[Certificate]):
    open_url(durable_url).create_certificate(pems[0])
    assert open_url(durable_url).get_certificate("web") == pems[0]


def test_a_sqlite_file_is_its_owners_alone(
    tmp_path: Path, open_url: Callable[[str], SyncStore], pems: list[Certificate]
) -> None:
    path = tmp_path / "state.db"
    store = open_url(f"sqlite:///{path}")
    store.create_certificate(pems[0])
    files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
    assert all(f.exists() for f in files)
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    store.close()
    # A file an earlier restcp left readable to others is made its owner's alone at open.
    older = tmp_path / "older.db"
    open_url(f"sqlite:///{older}").close()
    older.chmod(0o644)
    open_url(f"sqlite:///{older}").create_certificate(pems[1])
    assert stat.S_IMODE(older.stat().st_mode) == 0o600
