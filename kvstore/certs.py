"""`kvstore certs`: a cluster CA, and member and client certificates signed by it.

Built on the maintained `cryptography` library (the `tls` extra: `pip install 'kvstore-raft[tls]'`);
nothing here encodes X.509 by hand. Keys are EC P-256 (fast TLS handshakes); certificates are
signed with ECDSA-SHA256.

The identity scheme (checked by kvstore/transport/tls.py): every certificate carries exactly one
subjectAltName URI naming what its holder is,

    kvstore://member/<node id>     a member; may speak the peer (Raft) protocol as that id
    kvstore://client/<name>        a client; may open client connections only

and, for defence in depth, an ExtendedKeyUsage: members get serverAuth and clientAuth (they both
listen and dial), clients clientAuth only (so TLS itself refuses a client certificate on a
listener). A member certificate may also list the member's addresses (`--address`) as IP or DNS
names; they are informational, as members are trusted by id, never by address.

Files in `DIR` (private keys 0600, created with O_EXCL: nothing is ever overwritten):

    ca.crt, ca.key                           the cluster CA (`certs init`)
    member-<id>.crt, member-<id>.key         one per member (`certs member --id <id>`)
    client-<name>.crt, client-<name>.key     one per client (`certs client --name <name>`)

Keep `ca.key` off the members: only whoever creates certificates needs it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from kvstore.errors import InvalidArgumentError, KVStoreError
from kvstore.transport.tls import KIND_CLIENT, KIND_MEMBER, TLSConfig, identity_uri

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey

CA_CERT: Final = "ca.crt"
CA_KEY: Final = "ca.key"
CA_VALID_DAYS: Final = 3650
CERT_VALID_DAYS: Final = 825

_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""Member ids and client names that fit in a URI and a file name unchanged."""


def _crypto() -> None:
    try:
        import cryptography  # noqa: F401
    except ImportError:
        raise KVStoreError(
            "kvstore certs needs the 'cryptography' package: pip install 'kvstore-raft[tls]'"
        ) from None


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidArgumentError(
            f"{what} must be 1-64 characters of letters, digits, '.', '_' or '-' "
            f"(starting with a letter or digit), got {name!r}"
        )
    return name


def member_files(directory: str | os.PathLike[str], node_id: str) -> tuple[Path, Path]:
    """The (certificate, key) paths of member `node_id` in `directory`."""
    base = Path(directory)
    return base / f"member-{node_id}.crt", base / f"member-{node_id}.key"


def client_files(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """The (certificate, key) paths of client `name` in `directory`."""
    base = Path(directory)
    return base / f"client-{name}.crt", base / f"client-{name}.key"


def member_config(directory: str | os.PathLike[str], node_id: str) -> TLSConfig:
    """The `TLSConfig` of member `node_id`, from files `certs member` wrote in `directory`."""
    cert, key = member_files(directory, node_id)
    return TLSConfig(ca_file=str(Path(directory) / CA_CERT), cert_file=str(cert), key_file=str(key))


def client_config(directory: str | os.PathLike[str], name: str) -> TLSConfig:
    """The `TLSConfig` of client `name`, from files `certs client` wrote in `directory`."""
    cert, key = client_files(directory, name)
    return TLSConfig(ca_file=str(Path(directory) / CA_CERT), cert_file=str(cert), key_file=str(key))


def _refuse_existing(paths: Sequence[Path]) -> None:
    for path in paths:
        if path.exists():
            raise InvalidArgumentError(f"{path} already exists; refusing to overwrite it")


def _write_new(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL: never overwrite, not even a file that appeared after the check above.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow what we ask for
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _new_key() -> EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    data: bytes = cert.public_bytes(serialization.Encoding.PEM)
    return data


def init_ca(directory: str | os.PathLike[str], *, cluster: str = "kvstore") -> tuple[Path, Path]:
    """Create the cluster CA in `directory` (made 0700 if new): `ca.crt` and `ca.key` (0600).

    `cluster` names the CA (its subject). Returns (certificate, key) paths. Refuses to overwrite
    an existing CA (`InvalidArgumentError`).
    """
    _crypto()
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    _check_name(cluster, "the cluster name")
    base = Path(directory)
    cert_path, key_path = base / CA_CERT, base / CA_KEY
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    _refuse_existing([cert_path, key_path])
    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kvstore"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"kvstore cluster CA {cluster}"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_new(key_path, _key_pem(key), 0o600)
    _write_new(cert_path, _cert_pem(cert), 0o644)
    return cert_path, key_path


def _load_ca(base: Path) -> tuple[Any, EllipticCurvePrivateKey]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    cert_path, key_path = base / CA_CERT, base / CA_KEY
    for path in (cert_path, key_path):
        if not path.is_file():
            raise InvalidArgumentError(f"{path} not found; run `kvstore certs init --dir {base}`")
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidArgumentError(f"cannot read the CA in {base}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidArgumentError(f"{key_path} is not an EC private key")
    return cert, key


def _san_addresses(addresses: Sequence[str]) -> list[Any]:
    from cryptography import x509

    from kvstore.transport.tcp import parse_address

    names: list[Any] = []
    for address in addresses:
        try:
            host, _port = parse_address(address)
        except ValueError as exc:
            raise InvalidArgumentError(str(exc)) from None
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _issue(
    base: Path, kind: str, name: str, paths: tuple[Path, Path], addresses: Sequence[str]
) -> tuple[Path, Path]:
    _crypto()
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    cert_path, key_path = paths
    ca_cert, ca_key = _load_ca(base)
    _refuse_existing([cert_path, key_path])
    alt_names = [x509.UniformResourceIdentifier(identity_uri(kind, name))]
    alt_names += _san_addresses(addresses)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if kind == KIND_MEMBER:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    key = _new_key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kvstore"),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kind),
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_new(key_path, _key_pem(key), 0o600)
    _write_new(cert_path, _cert_pem(cert), 0o644)
    return cert_path, key_path


def issue_member(
    directory: str | os.PathLike[str], node_id: str, *, addresses: Sequence[str] = ()
) -> tuple[Path, Path]:
    """Create `member-<id>.crt` and `.key` (0600) in `directory`, signed by its CA.

    The certificate names `kvstore://member/<node_id>`; `addresses` ("host:port") are added as
    IP or DNS names for information. Returns (certificate, key) paths; refuses to overwrite.
    """
    _check_name(node_id, "the member id")
    return _issue(
        Path(directory), KIND_MEMBER, node_id, member_files(directory, node_id), addresses
    )


def issue_client(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Create `client-<name>.crt` and `.key` (0600) in `directory`, signed by its CA.

    The certificate names `kvstore://client/<name>`: it opens client connections, never peer
    ones. Returns (certificate, key) paths; refuses to overwrite.
    """
    _check_name(name, "the client name")
    return _issue(Path(directory), KIND_CLIENT, name, client_files(directory, name), ())
