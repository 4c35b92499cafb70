"""Certificates for the TLS tests: one cluster CA with members n1..n3 and a client "app"."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvstore import certs


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding ca.crt/.key, member-n1..n3 and client-app certificates and keys."""
    directory = tmp_path_factory.mktemp("pki")
    certs.init_ca(directory, cluster="test")
    for node_id in ("n1", "n2", "n3"):
        certs.issue_member(directory, node_id, addresses=["127.0.0.1:0"])
    certs.issue_client(directory, "app")
    return directory
