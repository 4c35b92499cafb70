"""The distribution as a user gets it: build the sdist, build a wheel from it, install that wheel
into a fresh venv and use it there.

`python -m build` (no --sdist/--wheel) writes the sdist and then builds the wheel from the
unpacked sdist, in an isolated environment that installs the [build-system] requirements: the
path a user's `pip install kvstore-raft` takes when no wheel fits. The venv gets the wheel and its
dependencies from the package index, never the `cli` extra: the library must run without rich.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from kvstore.testing.local_cluster import free_ports

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT_S = 300.0
"""Building compiles the C redo log once (for the wheel); installing fetches lmdb, cffi and
msgpack. Both took under 30 s here; the limit is for a loaded machine and a slow index."""


@dataclass(frozen=True)
class Built:
    sdist: Path
    wheel: Path
    log: str


@dataclass(frozen=True)
class Installed:
    python: Path
    bin_dir: Path
    work_dir: Path
    """An empty directory outside the source tree, so `import kvstore` finds the installed one."""


def _run(args: list[str | Path], *, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{output[-6000:]}"
    return output


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    out_dir = tmp_path_factory.mktemp("dist")
    # This machine sets PYTHONDONTWRITEBYTECODE, which makes setuptools warn that it cannot
    # byte-compile; a user's shell does not, and any other warning must fail the test.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    log = _run([sys.executable, "-m", "build", "--outdir", out_dir, ROOT], cwd=ROOT, env=env)
    (sdist,) = out_dir.glob("*.tar.gz")
    (wheel,) = out_dir.glob("*.whl")
    return Built(sdist, wheel, log)


@pytest.fixture(scope="module")
def installed(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    venv = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", venv], cwd=venv)
    python = venv / "bin" / "python"
    _run([python, "-m", "pip", "install", "--quiet", built.wheel], cwd=venv)
    return Installed(python, venv / "bin", tmp_path_factory.mktemp("user"))


def test_build_prints_no_warning(built: Built) -> None:
    warnings = [line for line in built.log.splitlines() if re.search("warn|deprecat", line, re.I)]
    assert not warnings, "\n".join(warnings)
    assert built.sdist.name.startswith("kvstore_raft-"), built.sdist.name


def test_sdist_holds_everything_the_wheel_is_built_from(built: Built) -> None:
    with tarfile.open(built.sdist) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    needed = {
        "pyproject.toml",
        "setup.py",
        "LICENSE",
        "README.md",
        "native/kvwal.c",
        "native/crc32c.c",
        "native/kvwal.h",
        "native/build_kvwal.py",
        "native/FORMAT.md",
        "kvstore/py.typed",
    }
    assert needed <= names, sorted(needed - names)


def test_wheel_is_abi3_typed_and_holds_no_tests(built: Built) -> None:
    # name-version-python-abi-platform.whl
    python_tag, abi_tag = built.wheel.name.split("-")[2:4]
    assert (python_tag, abi_tag) == ("cp311", "abi3"), built.wheel.name
    with zipfile.ZipFile(built.wheel) as wheel:
        names = wheel.namelist()
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        fields = wheel.read(metadata).decode()
    top_level = {name.split("/", 1)[0] for name in names}
    assert not {"tests", "benchmarks", "native"} & top_level, sorted(top_level)
    assert "kvstore/py.typed" in names
    assert "kvstore/_kvwal.abi3.so" in names, [n for n in names if n.endswith(".so")]
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    assert "Name: kvstore-raft" in fields
    assert "License-Expression: MIT" in fields
    assert "Classifier: Typing :: Typed" in fields
    assert "Classifier: Programming Language :: Python :: 3.13" in fields
    # What the library needs, and nothing that only the CLI, the tests or benchmarks use.
    required = {
        re.split(r"[<>=!~ ;\[]", line.removeprefix("Requires-Dist: "))[0].lower()
        for line in fields.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    }
    assert required == {"lmdb", "cffi", "msgpack"}, required


EMBEDDED = """
import sys
import tempfile

import kvstore

assert "site-packages" in kvstore.__file__, kvstore.__file__
try:
    import rich
except ModuleNotFoundError:
    pass
else:
    raise AssertionError("rich is installed: this run must show that the library needs none")

peers = {"n1": "127.0.0.1:%(port)d"}
with tempfile.TemporaryDirectory() as data_dir, kvstore.Node("n1", data_dir, peers) as node:
    node.wait_for_leader(timeout_s=30.0)
    node.put(b"greeting", b"hello")
    assert node.get(b"greeting") == b"hello"
    assert node.get(b"greeting", consistency="stale") == b"hello"
    print("version", kvstore.__version__)
"""


def _run_embedded(python: Path, work_dir: Path, built: Built) -> None:
    (port,) = free_ports(1)
    script = work_dir / "embedded.py"
    script.write_text(EMBEDDED % {"port": port})
    output = _run([python, script], cwd=work_dir)
    version = built.wheel.name.split("-")[1]
    assert f"version {version}" in output, output


def test_installed_wheel_runs_an_embedded_put_and_get(built: Built, installed: Installed) -> None:
    _run_embedded(installed.python, installed.work_dir, built)
    version = built.wheel.name.split("-")[1]

    printed = _run([installed.bin_dir / "kvstore", "--version"], cwd=installed.work_dir)
    assert printed.strip() == f"kvstore {version}"


def _find_python(version: str) -> Path | None:
    """CPython `version` ("3.12") from PATH or pyenv's versions, if this machine has it."""
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    found = shutil.which(f"python{version}")
    candidates = [Path(found)] if found else []
    candidates += sorted(pyenv_root.glob(f"versions/{version}.*/bin/python{version}"))
    check = (
        f"import sys, venv; sys.exit(sys.version_info[:2] != {tuple(map(int, version.split('.')))})"
    )
    for candidate in candidates:
        # A pyenv shim exists for a version that is installed but not selected, and fails.
        if (
            subprocess.run([candidate, "-c", check], capture_output=True, check=False).returncode
            == 0
        ):
            return candidate
    return None


@pytest.mark.parametrize("version", ["3.12", "3.13"])
def test_the_abi3_wheel_installs_and_runs_on_newer_pythons(
    version: str, built: Built, tmp_path: Path
) -> None:
    python = _find_python(version)
    if python is None:
        pytest.skip(f"no CPython {version} on this machine (PATH or pyenv)")
    venv = tmp_path / "venv"
    _run([python, "-m", "venv", venv], cwd=tmp_path)
    _run([venv / "bin" / "python", "-m", "pip", "install", "--quiet", built.wheel], cwd=tmp_path)
    work_dir = tmp_path / "user"
    work_dir.mkdir()
    _run_embedded(venv / "bin" / "python", work_dir, built)


CLEAN = """
import asyncio

import kvstore
import kvstore.aio


def read(node: kvstore.Node) -> bytes | None:
    level: kvstore.Consistency = "lease"
    node.put(b"k", b"v", timeout_s=2.0)
    node.get(b"k", consistency="stale")
    return node.get(b"k", consistency=level)


def scan(client: kvstore.Client) -> list[tuple[bytes, bytes]]:
    return client.scan(b"user/", limit=10, consistency="linearizable")


async def read_async(addresses: list[str]) -> bytes | None:
    async with kvstore.aio.Client(addresses, balancer="round_robin") as client:
        return await client.get(b"k", consistency="stale")


def main() -> None:
    options = kvstore.Options(tick_s=0.05)
    with kvstore.Node("n1", "/tmp/x", {"n1": "127.0.0.1:7001"}, options=options) as node:
        read(node)
    with kvstore.Client(["127.0.0.1:7001"], balancer="latency") as client:
        scan(client)
    asyncio.run(read_async(["127.0.0.1:7001"]))
    print(kvstore.__version__.upper())
"""

TYPO = """
import kvstore


def read(node: kvstore.Node) -> bytes | None:
    return node.get(b"k", consistency="linearisable")


def connect() -> kvstore.Client:
    return kvstore.Client(["127.0.0.1:7001"], balancer="round-robin")
"""


def _mypy(installed: Installed, name: str, source: str) -> subprocess.CompletedProcess[str]:
    script = installed.work_dir / name
    script.write_text(textwrap.dedent(source))
    # mypy from the test's own environment, analysing the packages installed in the fresh venv;
    # run from a directory with no config file, as a user's project would be.
    mypy = [sys.executable, "-m", "mypy", "--strict", "--no-incremental"]
    return subprocess.run(
        [*mypy, "--python-executable", str(installed.python), name],
        cwd=installed.work_dir,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )


def test_user_script_passes_mypy_strict_against_the_installed_package(
    installed: Installed,
) -> None:
    done = _mypy(installed, "clean.py", CLEAN)
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_rejects_a_misspelled_consistency_level_and_balancer(installed: Installed) -> None:
    done = _mypy(installed, "typo.py", TYPO)
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 2, done.stdout
    assert "'linearisable'" in errors[0] and "[arg-type]" in errors[0], errors[0]
    assert "'round-robin'" in errors[1] and "[arg-type]" in errors[1], errors[1]
