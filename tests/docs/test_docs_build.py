"""The documentation site: it builds without a warning, every public name has an entry, the
disk format page is native/FORMAT.md itself, the README links only to files in the repository,
and the getting-started example runs.

The site is built once per run with `mkdocs build --strict` into a temporary directory (the same
command as `make docs`, which writes into site/).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

import kvstore
import kvstore.aio
from kvstore.testing.local_cluster import free_ports

ROOT = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT_S = 120.0
EXAMPLE_TIMEOUT_S = 60.0


class _Ids(HTMLParser):
    """Every `id` attribute of a page (mkdocstrings gives each object one: its dotted path)."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name == "id" and value:
                self.ids.add(value)


class _Text(HTMLParser):
    """The text of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def _ids(page: Path) -> set[str]:
    parser = _Ids()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.ids


def _text(page: Path) -> str:
    parser = _Text()
    parser.feed(page.read_text(encoding="utf-8"))
    return " ".join(" ".join(parser.parts).split())


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """The built site's directory and everything mkdocs printed while building it."""
    site_dir = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{output}"
    yield site_dir, output


def test_site_builds_without_warnings(site: tuple[Path, str]) -> None:
    site_dir, output = site
    warnings = [line for line in output.splitlines() if "WARNING" in line or "ERROR" in line]
    assert not warnings, "\n".join(warnings)
    assert (site_dir / "index.html").is_file()
    for page in ("getting-started", "operations", "design", "format", "multigroup"):
        assert (site_dir / page / "index.html").is_file(), page


def test_every_name_in_kvstore_all_has_an_entry(site: tuple[Path, str]) -> None:
    site_dir, _ = site
    ids = _ids(site_dir / "reference" / "index.html")
    missing = [name for name in kvstore.__all__ if f"kvstore.{name}" not in ids]
    assert not missing, f"public names without an entry in reference/: {missing}"


def test_every_name_in_kvstore_aio_all_has_an_entry(site: tuple[Path, str]) -> None:
    site_dir, _ = site
    ids = _ids(site_dir / "reference" / "aio" / "index.html")
    missing = [name for name in kvstore.aio.__all__ if f"kvstore.aio.{name}" not in ids]
    assert not missing, f"kvstore.aio names without an entry: {missing}"


def _public_definitions(path: Path) -> list[str]:
    """Classes and functions a module defines at top level without a leading underscore."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        node.name
        for node in tree.body
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and not node.name.startswith("_")
    ]


def test_every_testing_module_and_its_public_names_have_an_entry(
    site: tuple[Path, str],
) -> None:
    site_dir, _ = site
    ids = _ids(site_dir / "reference" / "testing" / "index.html")
    missing = []
    for path in sorted((ROOT / "kvstore" / "testing").glob("*.py")):
        if path.stem.startswith("_"):
            continue
        module = f"kvstore.testing.{path.stem}"
        if module not in ids:
            missing.append(module)
        missing.extend(
            f"{module}.{name}"
            for name in _public_definitions(path)
            if f"{module}.{name}" not in ids
        )
    assert not missing, f"kvstore.testing names without an entry: {missing}"


def test_format_page_is_native_format_md(site: tuple[Path, str]) -> None:
    site_dir, _ = site
    page = _text(site_dir / "format" / "index.html")
    source = (ROOT / "native" / "FORMAT.md").read_text(encoding="utf-8")
    headings = [line.lstrip("#").strip() for line in source.splitlines() if line.startswith("#")]
    assert len(headings) >= 5
    for heading in headings:
        assert " ".join(heading.replace("`", "").split()) in page, heading


_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_readme_links_point_at_files_in_the_repository() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = _LINK.findall(readme)
    assert any(target.startswith("docs/") for target in targets), "README links to no docs/"
    assert "../shared" not in readme
    for target in targets:
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (ROOT / target.split("#", 1)[0]).resolve()
        assert path.is_relative_to(ROOT), f"README links outside the repository: {target}"
        assert path.exists(), f"README links to a missing file: {target}"


def test_getting_started_example_runs(tmp_path: Path) -> None:
    """The first example of the guide, on free ports: a 3-node cluster in one process."""
    guide = (ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8")
    example = re.findall(r"```python\n(.*?)```", guide, re.S)[0]
    addresses = sorted(set(re.findall(r"127\.0\.0\.1:\d+", example)))
    assert len(addresses) == 3, addresses
    for address, port in zip(addresses, free_ports(3), strict=True):
        example = example.replace(address, f"127.0.0.1:{port}")
    script = tmp_path / "example.py"
    script.write_text(example, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=EXAMPLE_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(b'user/42', b'bob')" in result.stdout, result.stdout
