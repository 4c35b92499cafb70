"""Mutual TLS: the SSL contexts of members and clients, and who a certificate says its holder is.

Every connection is TLS 1.3 (the standard library's `ssl`), both sides present a certificate, and
both verify the other's against the cluster CA (`TLSConfig.ca_file`). Host names are not what we
trust: members know each other by id (DESIGN §3), so hostname checking is off and the identity is
read from the certificate instead. `kvstore certs` (kvstore/certs.py) writes certificates that
carry exactly one identity, as a subjectAltName URI:

    kvstore://member/<node id>     a member: may open peer (Raft) connections as that id, and
                                   client connections
    kvstore://client/<name>        a client: may open client connections only, never a peer one

The checks, on top of what TLS itself verifies (the chain up to our CA, the validity period,
that the other side holds the certificate's key):

- a dialer reaching member `n2` (a peer link) checks that the listener's certificate names
  member `n2`; a client checks that it names some member (`check_listener`);
- a listener checks that a dialer claiming peer id `n1` presents the member certificate of `n1`;
  a client certificate asking for a peer connection is refused, naming the conflict
  (`check_peer_claim`).

The sans-I/O handshake (kvstore/transport/auth.py) still runs inside the TLS channel, without a
secret: it carries the ids, the target and the consensus protocol; the proof is the certificate.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
import stat
from pathlib import Path
from typing import Final

from kvstore.errors import AuthenticationError, InvalidArgumentError

URI_PREFIX: Final = "kvstore://"
KIND_MEMBER: Final = "member"
KIND_CLIENT: Final = "client"


@dataclasses.dataclass(frozen=True)
class TLSConfig:
    """Where a member's or a client's TLS credentials are: PEM files written by `kvstore certs`.

    `ca_file` is the cluster CA's certificate (what the other side's certificate must chain up
    to), `cert_file` this side's certificate, `key_file` its private key. The files are checked
    when the config is made: each must exist and be readable, the key must not be readable or
    writable by group or others (as ssh refuses such keys), and the certificate must match the
    key. Any problem raises `InvalidArgumentError` naming the file.
    """

    ca_file: str
    """Path of the cluster CA certificate (PEM)."""
    cert_file: str
    """Path of this side's certificate (PEM): a member's or a client's."""
    key_file: str
    """Path of this side's private key (PEM, unencrypted; mode 0600)."""

    def __post_init__(self) -> None:
        for name in ("ca_file", "cert_file", "key_file"):
            value = getattr(self, name)
            if not isinstance(value, str | os.PathLike):
                raise InvalidArgumentError(f"TLSConfig.{name} must be a path, got {value!r}")
            path = os.fspath(value)
            object.__setattr__(self, name, path)
            _check_readable(path, name)
        mode = os.stat(self.key_file).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise InvalidArgumentError(
                f"private key file {self.key_file} is accessible by group or others "
                f"(mode {stat.S_IMODE(mode):04o}); run chmod 600 on it"
            )
        # Load once now, so a bad PEM or a certificate that does not match its key is reported
        # where the config is made, not at the first connection.
        client_context(self)


def _check_readable(path: str, name: str) -> None:
    if not Path(path).is_file():
        raise InvalidArgumentError(f"TLSConfig.{name}: {path} does not exist or is not a file")
    if not os.access(path, os.R_OK):
        raise InvalidArgumentError(f"TLSConfig.{name}: {path} is not readable")


def _context(config: TLSConfig, protocol: int) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    # Members are known by id, not by host name: the id is checked from the certificate.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_verify_locations(cafile=config.ca_file)
    except (ssl.SSLError, OSError) as exc:
        raise InvalidArgumentError(f"cannot load CA certificate {config.ca_file}: {exc}") from None
    try:
        context.load_cert_chain(certfile=config.cert_file, keyfile=config.key_file)
    except (ssl.SSLError, OSError) as exc:
        raise InvalidArgumentError(
            f"cannot load certificate {config.cert_file} with key {config.key_file} "
            f"(not PEM, or the key does not match): {exc}"
        ) from None
    return context


def server_context(config: TLSConfig) -> ssl.SSLContext:
    """The listener's context: TLS 1.3, a client certificate required, verified against the CA."""
    return _context(config, ssl.PROTOCOL_TLS_SERVER)


def client_context(config: TLSConfig) -> ssl.SSLContext:
    """The dialer's context (peer links and clients): TLS 1.3, presents our certificate, verifies
    the listener's against the CA; host names are not checked (ids are)."""
    return _context(config, ssl.PROTOCOL_TLS_CLIENT)


@dataclasses.dataclass(frozen=True)
class Identity:
    """Who a verified certificate says its holder is."""

    kind: str
    """`KIND_MEMBER` or `KIND_CLIENT`."""
    name: str
    """The member's node id, or the client's name."""

    def __str__(self) -> str:
        return f"{URI_PREFIX}{self.kind}/{self.name}"


def identity_uri(kind: str, name: str) -> str:
    """The subjectAltName URI that names `kind` ("member" or "client") `name`."""
    return str(Identity(kind, name))


def parse_identity(peercert: object) -> Identity:
    """The identity in a certificate as `ssl` decodes it (`SSLObject.getpeercert()`).

    Raises `AuthenticationError` unless it carries exactly one `kvstore://member/<id>` or
    `kvstore://client/<name>` URI.
    """
    sans = peercert.get("subjectAltName", ()) if isinstance(peercert, dict) else ()
    uris = [
        value
        for entry in sans
        if isinstance(entry, tuple) and len(entry) == 2 and entry[0] == "URI"
        for value in (entry[1],)
        if isinstance(value, str) and value.startswith(URI_PREFIX)
    ]
    if len(uris) != 1:
        raise AuthenticationError(
            f"the certificate names {len(uris)} kvstore identities; exactly one "
            f"{URI_PREFIX}member/<id> or {URI_PREFIX}client/<name> is required"
        )
    kind, sep, name = uris[0][len(URI_PREFIX) :].partition("/")
    if not sep or not name or kind not in (KIND_MEMBER, KIND_CLIENT):
        raise AuthenticationError(f"the certificate names an unknown identity {uris[0][:120]!r}")
    return Identity(kind, name)


def connection_identity(ssl_object: object) -> Identity:
    """The verified identity of the other side of a TLS connection (its `ssl_object` extra).

    Raises `AuthenticationError` if the connection is not TLS or carries no usable identity.
    """
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        raise AuthenticationError("the connection is not protected by TLS")
    return parse_identity(ssl_object.getpeercert())


def check_listener(identity: Identity, target_id: str | None) -> None:
    """A dialer's check of the listener: a member, and the member `target_id` if given.

    Raises `AuthenticationError` naming what the certificate says instead.
    """
    if identity.kind != KIND_MEMBER:
        raise AuthenticationError(
            f"the listener presents a client certificate ({identity}), not a member's"
        )
    if target_id is not None and identity.name != target_id:
        raise AuthenticationError(
            f"dialed member {target_id!r} but its certificate names member {identity.name!r}"
        )


def check_peer_claim(identity: Identity, claimed_id: str) -> None:
    """A listener's check of a dialer that asks for a peer connection as `claimed_id`.

    Only the member certificate of `claimed_id` may: a client certificate never opens a peer
    connection, and one member cannot speak as another. Raises `AuthenticationError` naming the
    conflict.
    """
    if identity.kind != KIND_MEMBER:
        raise AuthenticationError(
            f"a client certificate ({identity}) cannot open a peer connection "
            f"(it claimed member id {claimed_id!r})"
        )
    if identity.name != claimed_id:
        raise AuthenticationError(
            f"the certificate of member {identity.name!r} cannot open a peer connection "
            f"as member {claimed_id!r}"
        )


def certificate_identity(cert_file: str) -> Identity | None:
    """The identity in our own certificate file, or None when `cryptography` (the `tls` extra) is
    not installed to read it. Raises `InvalidArgumentError` if the file names no identity."""
    try:
        from cryptography import x509
    except ImportError:
        return None
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound) as exc:
        raise InvalidArgumentError(
            f"certificate {cert_file} names no kvstore identity: {exc}"
        ) from None
    uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    entries = tuple(("URI", uri) for uri in uris)
    try:
        return parse_identity({"subjectAltName": entries})
    except AuthenticationError as exc:
        raise InvalidArgumentError(f"certificate {cert_file}: {exc}") from None


def check_own_certificate(config: TLSConfig, node_id: str) -> None:
    """Refuse to start member `node_id` with a certificate that names someone else (every peer
    would refuse it anyway, less clearly). Skipped without `cryptography` to read the file."""
    identity = certificate_identity(config.cert_file)
    if identity is not None and (identity.kind != KIND_MEMBER or identity.name != node_id):
        raise InvalidArgumentError(
            f"certificate {config.cert_file} names {identity}, not member {node_id!r}"
        )
