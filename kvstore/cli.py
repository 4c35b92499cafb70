"""The `kvstore` command (also `python -m kvstore`): serve a node, talk to a cluster, run the demo.

Keys and values on the command line are UTF-8 text; they are stored as its bytes. With `--hex`
they are hex instead (binary keys and values), and a value given as `-` is read from standard
input, byte for byte (`--value-literal` stores a literal `-`). `--json` prints one JSON document
on stdout.

Bad input never ends in a traceback: it is one line on stderr and a non-zero exit status (see
`EXIT_HELP`). `serve` exits non-zero, with the cause on stderr, when its member stops serving
after a storage failure (a full disk, too many open files, a failed fsync).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import stat
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from kvstore.consensus import CONSENSUS_KINDS
from kvstore.errors import (
    AuthenticationError,
    InvalidArgumentError,
    KVStoreError,
    NotLeaderError,
    OperationTimeoutError,
    UnavailableError,
)
from kvstore.options import CONSISTENCY_LEVELS, Options, check_timeout

if TYPE_CHECKING:
    from kvstore.transport.tls import TLSConfig

EXIT_OK = 0
EXIT_NOT_FOUND = 1
"""get/delete: the key is absent; cas: the comparison failed."""
EXIT_ERROR = 2
"""Bad input (usage), or an error from the cluster or the disk not listed below (one line on
stderr)."""
EXIT_NODE_FAILED = 3
"""serve: the member stopped serving after a storage failure (the cause is on stderr)."""
EXIT_UNAVAILABLE = 4
"""The cluster did not answer: unreachable, no leader, or a timeout; status: a member cannot be
reached or has failed."""
EXIT_AUTHENTICATION = 5
"""The cluster refused this client's secret or certificate."""
EXIT_INTERRUPTED = 130
"""Interrupted by SIGINT (Ctrl-C) outside `serve`, which exits 0 on SIGINT and SIGTERM."""

EXIT_HELP = f"""exit status:
  {EXIT_OK}    success
  {EXIT_NOT_FOUND}    get/delete: the key is absent; cas: the comparison failed
  {EXIT_ERROR}    bad input (usage), or another error of the cluster or the disk (one line)
  {EXIT_NODE_FAILED}    serve: the member stopped serving after a storage failure (cause on stderr)
  {EXIT_UNAVAILABLE}    the cluster is unavailable: connection refused, no leader, or a timeout;
       status: some member cannot be reached or has failed
  {EXIT_AUTHENTICATION}    authentication failed (wrong secret or certificate)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)

scripts:
  --json          print one JSON document on stdout (keys and values as UTF-8 strings;
                  a failure after the arguments are parsed prints {{"error": {{...}}}})
  --hex           keys and values given and printed are hex (binary keys and values)
  VALUE -         read the value from standard input, byte for byte (with --hex too);
                  --value-literal stores a literal "-" instead"""

VALUE_STDIN_BYTES_MAX = 1 << 20
"""The largest value read from standard input (the client's default `max_value_bytes`)."""

FAILURE_POLL_S = 0.1
"""How often `serve` looks whether its member failed (it exits within this of a failure)."""

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_DEFAULT_OPTIONS = Options()


def parse_peers(text: str) -> dict[str, str]:
    """Parse `n1=127.0.0.1:7001,n2=...` into {node_id: address}."""
    _check_utf8_option(text, "--peers")
    peers: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        node_id, sep, address = item.partition("=")
        if not sep or not node_id or not address:
            raise argparse.ArgumentTypeError(f"peer {item!r} is not of the form id=host:port")
        if node_id in peers:
            raise argparse.ArgumentTypeError(f"peer id {node_id!r} is given twice")
        peers[node_id] = address
    if not peers:
        raise argparse.ArgumentTypeError("--peers names no member")
    return peers


def parse_endpoints(text: str) -> list[str]:
    """Parse `127.0.0.1:7001,127.0.0.1:7002` into a list of addresses."""
    _check_utf8_option(text, "--endpoints")
    endpoints = [item.strip() for item in text.split(",") if item.strip()]
    if not endpoints:
        raise argparse.ArgumentTypeError("--endpoints names no address")
    return endpoints


def read_secret_file(path: str | None) -> bytes | None:
    """The secret is the file's raw bytes; one trailing newline is ignored.

    Like ssh with a private key, a secret file that its group or others may read (or write) is
    refused: the secret is worth no more than the file's protection. Raises
    `InvalidArgumentError` naming the file and the fix.
    """
    if path is None:
        return None
    try:
        with open(path, "rb") as file:
            mode = stat.S_IMODE(os.fstat(file.fileno()).st_mode)
            if mode & 0o077:
                raise InvalidArgumentError(
                    f"secret file {path} is readable by others (mode {mode:04o}); chmod 600 {path}"
                )
            data = file.read()
    except OSError as error:
        raise InvalidArgumentError(
            f"cannot read secret file {path}: {error.strerror or error}"
        ) from None
    if data.endswith(b"\n"):
        data = data[:-1]
    if not data:
        raise InvalidArgumentError(f"secret file {path} is empty")
    return data


# --- mutual TLS ---


def _add_tls_arguments(parser: argparse.ArgumentParser, whose: str) -> None:
    group = parser.add_argument_group(
        "mutual TLS", "all three together (see `kvstore certs`); not with --secret-file"
    )
    group.add_argument("--tls-ca", metavar="FILE", help="the cluster CA certificate (ca.crt)")
    group.add_argument("--tls-cert", metavar="FILE", help=f"{whose} certificate")
    group.add_argument("--tls-key", metavar="FILE", help=f"{whose} private key (mode 0600)")


def tls_config(args: argparse.Namespace) -> TLSConfig | None:
    """The `TLSConfig` of --tls-ca/--tls-cert/--tls-key, or None when none is given."""
    from kvstore.transport.tls import TLSConfig

    paths = (args.tls_ca, args.tls_cert, args.tls_key)
    if all(path is None for path in paths):
        return None
    if any(path is None for path in paths):
        raise InvalidArgumentError("--tls-ca, --tls-cert and --tls-key go together")
    if getattr(args, "secret_file", None) is not None:
        raise InvalidArgumentError("give either --tls-* or --secret-file, not both")
    return TLSConfig(ca_file=args.tls_ca, cert_file=args.tls_cert, key_file=args.tls_key)


def _add_certs_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    certs = commands.add_parser(
        "certs", help="create the cluster CA and member and client certificates (mutual TLS)"
    )
    certs_commands = certs.add_subparsers(dest="certs_command", required=True)
    init = certs_commands.add_parser("init", help="create the cluster CA (ca.crt, ca.key)")
    init.add_argument("--dir", required=True, help="where the files go (created 0700)")
    init.add_argument("--cluster", default="kvstore", help="the cluster's name, in the CA")
    member = certs_commands.add_parser(
        "member", help="create member-<id>.crt/.key, naming the member id"
    )
    member.add_argument("--dir", required=True, help="the directory holding the CA")
    member.add_argument("--id", required=True, help="the member's node id")
    member.add_argument(
        "--address",
        action="append",
        default=[],
        help="host:port of the member, recorded for information (repeatable)",
    )
    client = certs_commands.add_parser(
        "client", help="create client-<name>.crt/.key: may talk to the cluster, never as a member"
    )
    client.add_argument("--dir", required=True, help="the directory holding the CA")
    client.add_argument("--name", required=True, help="the client's name")


def _certs(args: argparse.Namespace) -> int:
    from kvstore import certs

    if args.certs_command == "init":
        paths = certs.init_ca(args.dir, cluster=args.cluster)
    elif args.certs_command == "member":
        paths = certs.issue_member(args.dir, args.id, addresses=args.address)
    else:
        paths = certs.issue_client(args.dir, args.name)
    for path in paths:
        print(f"wrote {path}")
    return EXIT_OK


def _timeout(text: str) -> float:
    try:
        return check_timeout(float(text), "--timeout")
    except ValueError as error:  # InvalidArgumentError is a ValueError too
        message = str(error) if isinstance(error, InvalidArgumentError) else f"{text!r}"
        raise argparse.ArgumentTypeError(f"invalid timeout: {message}") from None


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"unknown log level {text!r}; one of {', '.join(LOG_LEVELS)}"
        )
    return level


def _check_utf8_option(text: str, what: str) -> None:
    try:
        text.encode()
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(
            f"{what} {os.fsencode(text)!r} is not valid UTF-8"
        ) from None


def _node_id(text: str) -> str:
    _check_utf8_option(text, "node id")
    if not text:
        raise argparse.ArgumentTypeError("a node id must not be empty")
    return text


def _cluster_name(text: str) -> str:
    _check_utf8_option(text, "--cluster-name")
    return text


def _utf8(text: str, what: str) -> bytes:
    """The UTF-8 bytes of a command-line argument; arguments that are not UTF-8 (the shell
    passed raw bytes, which Python holds as surrogate escapes) are refused."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        raw = os.fsencode(text)
        raise InvalidArgumentError(
            f"{what} {raw!r} is not valid UTF-8; keys and values on the command line are text"
        ) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


_SIZE_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size_bytes(text: str) -> int:
    """A byte count: digits with an optional binary suffix K, M, G or T (also KiB, KB...):
    "2G" is 2 GiB. Raises `argparse.ArgumentTypeError` otherwise, or if it is not >= 1."""
    body = text.strip().upper().removesuffix("IB").removesuffix("B")
    suffix = body[-1:] if body[-1:] in _SIZE_SUFFIXES else ""
    digits = body[: len(body) - len(suffix)]
    if not digits.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 1073741824 or 2G")
    value = int(digits) * _SIZE_SUFFIXES[suffix]
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not >= 1 byte")
    return value


def _add_consistency_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--consistency", default="linearizable", choices=CONSISTENCY_LEVELS)


def _add_client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--endpoints",
        type=parse_endpoints,
        default=["127.0.0.1:7001"],
        help="comma-separated host:port of members (default 127.0.0.1:7001)",
    )
    parser.add_argument(
        "--secret-file",
        help="file holding the client secret (the cluster secret if the members have no "
        "separate --client-secret-file)",
    )
    parser.add_argument("--timeout", type=_timeout, default=5.0, help="seconds to wait (default 5)")
    parser.add_argument(
        "--json", action="store_true", help="print the result as one JSON document on stdout"
    )
    parser.add_argument(
        "--hex",
        action="store_true",
        help="keys and values given and printed are hex-encoded (binary keys and values)",
    )
    _add_tls_arguments(parser, "this client's")


def _add_value_literal_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--value-literal",
        action="store_true",
        help='a value "-" is the one-byte value "-", not standard input',
    )


def _add_consensus_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--consensus",
        choices=CONSENSUS_KINDS,
        default=_DEFAULT_OPTIONS.consensus,
        help=f"the protocol of the local cluster (default {_DEFAULT_OPTIONS.consensus})",
    )


def _add_version_argument(parser: argparse.ArgumentParser) -> None:
    from kvstore import __version__

    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {__version__}",
        help="print the version and exit",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand (each has --help)."""
    parser = argparse.ArgumentParser(
        prog="kvstore",
        description="An embedded, Raft-replicated key-value store.",
        epilog=EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--log-level",
        type=_log_level,
        default="WARNING",
        help=f"logging level: {', '.join(LOG_LEVELS)} (default WARNING)",
    )
    _add_version_argument(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run one member of a cluster until SIGTERM")
    serve.add_argument("--id", required=True, type=_node_id, help="this member's node id")
    serve.add_argument("--data-dir", required=True, help="directory for the log and the state")
    serve.add_argument(
        "--peers",
        required=True,
        type=parse_peers,
        help="id=host:port of every voting member, this one included",
    )
    serve.add_argument("--secret-file", help="file holding the cluster secret")
    _add_tls_arguments(serve, "this member's")
    serve.add_argument(
        "--client-secret-file",
        help="file holding the secret clients prove (default: the cluster secret); a holder of "
        "only this one can never connect as a member",
    )
    serve.add_argument(
        "--join",
        action="store_true",
        help="join an existing cluster (then run `kvstore member add` against it)",
    )
    serve.add_argument(
        "--consensus",
        choices=CONSENSUS_KINDS,
        default=_DEFAULT_OPTIONS.consensus,
        help="the protocol the cluster runs; every member must run the same one "
        f"(default {_DEFAULT_OPTIONS.consensus}; paxos runs a fixed configuration)",
    )
    serve.add_argument(
        "--cluster-name",
        type=_cluster_name,
        default=_DEFAULT_OPTIONS.cluster_name,
        help="read when the cluster is created: its cluster id is derived from this name and "
        "the founding member ids; clusters that share member ids need different names "
        f"(default {_DEFAULT_OPTIONS.cluster_name})",
    )
    serve.add_argument(
        "--checkpoint-entries",
        type=_positive_int,
        default=_DEFAULT_OPTIONS.checkpoint_entries,
        metavar="N",
        help="applied entries between LMDB checkpoints, after which the redo log is compacted "
        f"(default {_DEFAULT_OPTIONS.checkpoint_entries}; small values are for tests)",
    )

    serve.add_argument(
        "--quota-bytes",
        type=parse_size_bytes,
        default=_DEFAULT_OPTIONS.quota_bytes,
        metavar="SIZE",
        help="storage quota, e.g. 2G: at it writes are refused (reads and deletes go on); "
        "must be the same on every member (default 8G)",
    )

    put = commands.add_parser("put", help="write a key")
    put.add_argument("key")
    put.add_argument("value", help='the value; "-" reads it from standard input')
    _add_value_literal_argument(put)
    _add_client_arguments(put)

    get = commands.add_parser("get", help="read a key (exit 1 if absent)")
    get.add_argument("key")
    _add_consistency_argument(get)
    _add_client_arguments(get)

    delete = commands.add_parser("delete", help="delete a key (exit 1 if it was absent)")
    delete.add_argument("key")
    _add_client_arguments(delete)

    cas = commands.add_parser("cas", help="compare-and-swap (exit 1 if the comparison failed)")
    cas.add_argument("key")
    expected = cas.add_mutually_exclusive_group(required=True)
    expected.add_argument("--expected", help="the value the key must hold")
    expected.add_argument("--absent", action="store_true", help="the key must be absent")
    new = cas.add_mutually_exclusive_group(required=True)
    new.add_argument("--new", help="the value to store")
    new.add_argument("--delete", action="store_true", help="delete the key instead")
    _add_value_literal_argument(cas)
    _add_client_arguments(cas)

    scan = commands.add_parser("scan", help="list keys with a prefix, sorted")
    scan.add_argument("prefix", nargs="?", default="")
    scan.add_argument("--limit", type=_positive_int, default=None)
    _add_consistency_argument(scan)
    _add_client_arguments(scan)

    status = commands.add_parser(
        "status",
        help="show every member's role, term and indices (exit 4 if one cannot be reached)",
    )
    _add_client_arguments(status)

    member = commands.add_parser("member", help="change the membership")
    member_commands = member.add_subparsers(dest="member_command", required=True)
    add = member_commands.add_parser("add", help="add a member (learner, then voter)")
    add.add_argument("node_id", type=_node_id)
    add.add_argument("address", help="host:port the new member listens on")
    _add_client_arguments(add)
    remove = member_commands.add_parser("remove", help="remove a member")
    remove.add_argument("node_id", type=_node_id)
    _add_client_arguments(remove)

    transfer = commands.add_parser("transfer-leader", help="hand leadership to a member")
    transfer.add_argument("node_id", type=_node_id)
    _add_client_arguments(transfer)

    demo = commands.add_parser("demo", help="3 local nodes: write, kill the leader, prove no loss")
    demo.add_argument(
        "--keys", type=_positive_int, default=3000, help="keys to write (default 3000)"
    )
    _add_consensus_argument(demo)

    bench = commands.add_parser("bench", help="throughput and latency of a local 3-node cluster")
    bench.add_argument("--ops", type=_positive_int, default=5000, help="operations per workload")
    bench.add_argument(
        "--concurrency", type=_positive_int, default=256, help="operations in flight"
    )
    bench.add_argument("--json", help="also write the results to this JSON file")
    _add_consensus_argument(bench)
    _add_certs_parser(commands)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from kvstore.node import Node

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        logging.getLogger("kvstore.serve").info("signal %d: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    node = Node(
        args.id,
        args.data_dir,
        args.peers,
        options=Options(
            checkpoint_entries=args.checkpoint_entries,
            consensus=args.consensus,
            quota_bytes=args.quota_bytes,
            cluster_name=args.cluster_name,
        ),
        secret=read_secret_file(args.secret_file),
        join=args.join,
        tls=tls_config(args),
        client_secret=read_secret_file(args.client_secret_file),
    )
    node.start()
    print(f"kvstore serve: {args.id} listening on {node.address}", flush=True)
    try:
        # A member that stops serving says so: exit non-zero with the cause, so a supervisor
        # (systemd, Kubernetes) restarts it or alerts, instead of a process that lingers.
        while not stop.wait(FAILURE_POLL_S):
            failure = node.failure
            if failure is not None:
                print(f"error: {type(failure).__name__}: {failure}", file=sys.stderr, flush=True)
                return EXIT_NODE_FAILED
    finally:
        node.stop()
    return EXIT_OK


def _client_command(args: argparse.Namespace) -> int:
    from kvstore.client.client import Client

    # Every argument is checked (and standard input read) before anything is sent.
    key = _key_argument(args.key, "key", args) if "key" in args else b""
    value = _value_argument(args.value, "value", args) if "value" in args else b""
    expected: bytes | None = None
    new: bytes | None = None
    if args.command == "cas":
        if args.expected == "-" and args.new == "-" and not args.value_literal:
            raise InvalidArgumentError("only one of --expected and --new can read standard input")
        expected = None if args.absent else _value_argument(args.expected, "--expected", args)
        new = None if args.delete else _value_argument(args.new, "--new", args)
    prefix = _key_argument(args.prefix, "prefix", args) if "prefix" in args else b""
    with Client(
        args.endpoints,
        secret=read_secret_file(args.secret_file),
        timeout_s=args.timeout,
        tls=tls_config(args),
    ) as client:
        command = args.command
        if command == "put":
            client.put(key, value, timeout_s=args.timeout)
            _emit(args, {"key": _shown(key, args), "ok": True}, None)
            return EXIT_OK
        if command == "get":
            found = client.get(key, consistency=args.consistency, timeout_s=args.timeout)
            if found is None:
                print("not found", file=sys.stderr)
                _emit(args, {"key": _shown(key, args), "found": False, "value": None}, None)
                return EXIT_NOT_FOUND
            shown = _shown(found, args)
            _emit(args, {"key": _shown(key, args), "found": True, "value": shown}, shown)
            return EXIT_OK
        if command == "delete":
            deleted = client.delete(key, timeout_s=args.timeout)
            _emit(args, {"key": _shown(key, args), "deleted": deleted}, None)
            return EXIT_OK if deleted else EXIT_NOT_FOUND
        if command == "cas":
            swapped = client.cas(key, expected, new, timeout_s=args.timeout)
            text = "swapped" if swapped else "not swapped"
            _emit(args, {"key": _shown(key, args), "swapped": swapped}, text)
            return EXIT_OK if swapped else EXIT_NOT_FOUND
        if command == "scan":
            pairs = client.scan(prefix, limit=args.limit, consistency=args.consistency)
            items = [{"key": _shown(k, args), "value": _shown(v, args)} for k, v in pairs]
            lines = "\n".join(f"{item['key']}\t{item['value']}" for item in items)
            document = {"prefix": _shown(prefix, args), "count": len(items), "items": items}
            _emit(args, document, lines if items else None)
            return EXIT_OK
        if command == "status":
            return _print_status(client, args)
        if command == "member":
            if args.member_command == "add":
                client.add_member(args.node_id, args.address)
                document = {"member": "add", "node_id": args.node_id, "address": args.address}
            else:
                client.remove_member(args.node_id)
                document = {"member": "remove", "node_id": args.node_id}
            _emit(args, {**document, "ok": True}, None)
            return EXIT_OK
        if command == "transfer-leader":
            client.transfer_leadership(args.node_id)
            _emit(args, {"transfer_leader": args.node_id, "ok": True}, None)
            return EXIT_OK
    raise AssertionError(f"unhandled command {args.command}")


# --- scripting: --json, --hex, values from standard input ---------------------------------------


def _key_argument(text: str, what: str, args: argparse.Namespace) -> bytes:
    """The bytes of a key (or prefix) argument: hex with --hex, else UTF-8."""
    if not args.hex:
        return _utf8(text, what)
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise InvalidArgumentError(
            f"{what} {text!r} is not hex (--hex): two hex digits per byte, e.g. 00ff"
        ) from None


def _value_argument(text: str, what: str, args: argparse.Namespace) -> bytes:
    """The bytes of a value argument; "-" reads standard input (unless --value-literal)."""
    if text == "-" and not args.value_literal:
        return _read_stdin_value(what)
    return _key_argument(text, what, args)


def _read_stdin_value(what: str) -> bytes:
    """Standard input, byte for byte (not hex even with --hex), at most VALUE_STDIN_BYTES_MAX."""
    data = sys.stdin.buffer.read(VALUE_STDIN_BYTES_MAX + 1)
    if len(data) > VALUE_STDIN_BYTES_MAX:
        raise InvalidArgumentError(
            f"{what} from standard input is over {VALUE_STDIN_BYTES_MAX} bytes"
        )
    return data


def _shown(data: bytes, args: argparse.Namespace) -> str:
    """How a key or value is printed: hex with --hex; UTF-8 text (JSON needs it valid, else it
    asks for --hex); plain text shows invalid bytes as backslash escapes."""
    if args.hex:
        return data.hex()
    if not args.json:
        return data.decode(errors="backslashreplace")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise InvalidArgumentError(
            f"a key or value is not valid UTF-8 ({data[:32]!r}); add --hex"
        ) from None


def _emit(args: argparse.Namespace, document: dict[str, Any], text: str | None) -> None:
    """Print `document` as JSON with --json, else `text` (nothing when it is None)."""
    if args.json:
        document = {**document, "encoding": "hex" if args.hex else "utf-8"}
        print(json.dumps(document))
    elif text is not None:
        print(text)


def _exit_status(error: BaseException) -> int:
    """The exit status of a failed command (see EXIT_HELP)."""
    if isinstance(error, AuthenticationError):
        return EXIT_AUTHENTICATION
    unavailable = (UnavailableError, OperationTimeoutError, NotLeaderError, ConnectionError)
    if isinstance(error, (*unavailable, TimeoutError)):
        return EXIT_UNAVAILABLE
    return EXIT_ERROR


def _member_row(node_id: str | None, address: str) -> dict[str, Any]:
    return {
        "node_id": node_id,
        "address": address,
        "reachable": False,
        "role": None,
        "term": None,
        "leader_id": None,
        "commit_index": None,
        "applied_index": None,
        "failure": None,
        "error": None,
    }


def _print_status(client: Any, args: argparse.Namespace) -> int:
    """Every member in the members map of the first endpoint that answers, each asked directly,
    then any endpoint that is no member's address. Exit 4 when one cannot be reached or reports
    a failure (or no endpoint answers)."""
    first = None
    first_address = ""
    endpoint_errors: dict[str, str] = {}
    for address in args.endpoints:
        try:
            first = client.status(address, timeout_s=args.timeout)
            first_address = address
            break
        except (KVStoreError, OSError) as error:
            if isinstance(error, AuthenticationError):
                raise  # a wrong secret is not a member that is down: exit 5, not 4
            endpoint_errors[address] = f"{type(error).__name__}: {error}"
    rows: list[dict[str, Any]] = []
    if first is None:  # nobody answered: the endpoints are all there is to list
        for address in args.endpoints:
            row = _member_row(None, address)
            row["error"] = endpoint_errors[address]
            rows.append(row)
    else:
        # An endpoint that is no member's address is listed too (e.g. a mistyped one).
        listed = sorted(first.members.items())
        addresses = set(first.members.values())
        listed += [(None, address) for address in args.endpoints if address not in addresses]
        for node_id, address in listed:
            row = _member_row(node_id, address)
            try:
                same = node_id in (first.node_id, None) and address == first_address
                status = first if same else client.status(address, timeout_s=args.timeout)
            except (KVStoreError, OSError) as error:
                row["error"] = f"{type(error).__name__}: {error}"
            else:
                row.update(
                    node_id=status.node_id,
                    reachable=True,
                    role=status.role,
                    term=status.term,
                    leader_id=status.leader_id,
                    commit_index=status.commit_index,
                    applied_index=status.applied_index,
                    failure=status.failure,
                )
            rows.append(row)
    healthy = all(row["reachable"] and row["failure"] is None for row in rows)
    if args.json:
        print(json.dumps({"healthy": healthy, "members": rows}))
    else:
        _print_status_table(rows)
    return EXIT_OK if healthy else EXIT_UNAVAILABLE


def _print_status_table(rows: list[dict[str, Any]]) -> None:
    """A rich table on a terminal; plain aligned columns into a pipe or without rich."""
    Console: Any = _PlainConsole
    Table: Any = _PlainTable
    escape: Callable[[str], str] = str
    if sys.stdout.isatty():
        try:
            from rich.console import Console
            from rich.markup import escape
            from rich.table import Table
        except ModuleNotFoundError:  # the `cli` extra is not installed: plain text
            pass
    table = Table("address", "node", "role", "term", "leader", "commit", "applied")
    for row in rows:
        cells = [row["address"], row["node_id"] or "-"]
        if not row["reachable"]:
            cells += [f"unreachable ({row['error']})", "", "", "", ""]
        else:
            failure = row["failure"]
            cells += [
                row["role"] if failure is None else f"failed ({failure})",
                str(row["term"]),
                row["leader_id"] or "-",
                str(row["commit_index"]),
                str(row["applied_index"]),
            ]
        table.add_row(*(escape(cell) for cell in cells))
    Console().print(table)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `kvstore` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)  # a usage error exits here: one line, status 2
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {"serve": _serve, "certs": _certs}
    try:
        if args.command in _NEEDS_RICH:
            _require_rich(args.command)
        if args.command == "demo":
            from kvstore.demo import run_demo

            return run_demo(keys=args.keys, consensus=args.consensus)
        if args.command == "bench":
            from kvstore.bench.command import run_bench

            return run_bench(
                ops=args.ops,
                concurrency=args.concurrency,
                json_path=args.json,
                consensus=args.consensus,
            )
        handler = handlers.get(args.command, _client_command)
        return handler(args)
    except (KVStoreError, OSError) as error:
        # The class name tells an operator what kind of failure it is (CorruptionError...).
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        status = _exit_status(error)
        if getattr(args, "json", None) is True:  # bench's --json is a file name
            # A script reading stdout gets a document for a failure too, with the same status.
            error_document = {"type": type(error).__name__, "message": str(error)}
            print(json.dumps({"error": {**error_document, "exit_status": status}}))
        return status
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


# --- without rich (the `cli` extra) ---------------------------------------------------------------
# The library never imports rich; `status` prints plain columns without it, and the commands that
# draw progress bars say which extra to install.

_NEEDS_RICH = ("demo", "bench")
_MARKUP = re.compile(r"\[/?[a-z]+(?: [a-z]+)*\]")
"""rich's style tags such as `[red]` and `[/bold green]` (not `[Errno 111]`)."""


def _require_rich(command: str) -> None:
    """Raise `InvalidArgumentError` naming the extra to install unless rich can be imported."""
    try:
        import rich  # noqa: F401
    except ModuleNotFoundError:
        raise InvalidArgumentError(
            f"kvstore {command} draws with rich, which is not installed: "
            "pip install 'kvstore-raft[cli]'"
        ) from None


class _PlainTable:
    """The part of `rich.table.Table` that `status` uses, as aligned plain-text columns."""

    def __init__(self, *headers: str) -> None:
        self.rows: list[tuple[str, ...]] = [headers]

    def add_row(self, *cells: str) -> None:
        """Append one row; rich's style tags are dropped."""
        self.rows.append(tuple(_MARKUP.sub("", cell) for cell in cells))

    def render(self) -> str:
        """The rows, each column padded to its widest cell."""
        widths = [max(len(row[i]) for row in self.rows) for i in range(len(self.rows[0]))]
        return "\n".join(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in self.rows
        )


class _PlainConsole:
    """The part of `rich.console.Console` that `status` uses: print a table to stdout."""

    def print(self, table: _PlainTable) -> None:
        """Write `table` to standard output."""
        print(table.render())
