"""`kvstore certs` and the CLI's --tls-* flags: private files, no overwrite, clear errors."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from kvstore.cli import EXIT_ERROR, EXIT_OK, main
from kvstore.transport.tls import certificate_identity


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_certs_creates_private_keys_and_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = tmp_path / "pki"
    assert main(["certs", "init", "--dir", str(pki), "--cluster", "prod"]) == EXIT_OK
    assert (
        main(["certs", "member", "--dir", str(pki), "--id", "n1", "--address", "10.0.0.1:7001"])
        == EXIT_OK
    )
    assert main(["certs", "client", "--dir", str(pki), "--name", "app"]) == EXIT_OK
    assert _mode(pki) == 0o700
    for name in ("ca", "member-n1", "client-app"):
        assert _mode(pki / f"{name}.key") == 0o600, name
        assert (pki / f"{name}.crt").read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert str(certificate_identity(str(pki / "member-n1.crt"))) == "kvstore://member/n1"
    assert str(certificate_identity(str(pki / "client-app.crt"))) == "kvstore://client/app"
    capsys.readouterr()

    before = {path.name: path.read_bytes() for path in pki.iterdir()}
    for argv in (
        ["certs", "init", "--dir", str(pki)],
        ["certs", "member", "--dir", str(pki), "--id", "n1"],
        ["certs", "client", "--dir", str(pki), "--name", "app"],
    ):
        assert main(argv) == EXIT_ERROR, argv
        err = capsys.readouterr().err
        assert "already exists; refusing to overwrite" in err
        assert "Traceback" not in err
    assert {path.name: path.read_bytes() for path in pki.iterdir()} == before


def test_certs_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "member", "--dir", str(tmp_path), "--id", "n1"]) == EXIT_ERROR
    assert "kvstore certs init" in capsys.readouterr().err
    assert main(["certs", "init", "--dir", str(tmp_path)]) == EXIT_OK
    assert main(["certs", "client", "--dir", str(tmp_path), "--name", "../etc"]) == EXIT_ERROR
    assert "the client name must be" in capsys.readouterr().err
    assert not list(tmp_path.glob("client-*"))


def test_client_tls_flags_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "init", "--dir", str(tmp_path)]) == EXIT_OK
    assert main(["certs", "client", "--dir", str(tmp_path), "--name", "cli"]) == EXIT_OK
    capsys.readouterr()
    ca, cert, key = (tmp_path / name for name in ("ca.crt", "client-cli.crt", "client-cli.key"))
    assert main(["get", "k", "--tls-ca", str(ca)]) == EXIT_ERROR
    assert "go together" in capsys.readouterr().err
    key.chmod(0o644)
    flags = ["--tls-ca", str(ca), "--tls-cert", str(cert), "--tls-key", str(key)]
    assert main(["get", "k", *flags]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "client-cli.key" in err and "group or others" in err and "Traceback" not in err
