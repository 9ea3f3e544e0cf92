"""What newcomers and packagers meet first: metadata, license, changelog, README, install."""

from __future__ import annotations

import re
import subprocess
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
README = (ROOT / "README.md").read_text(encoding="utf-8")
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _version() -> str:
    match = re.search(r'^version = "([^"]+)"$', PYPROJECT, re.MULTILINE)
    assert match is not None
    return match[1]


def _project_urls() -> dict[str, str]:
    match = re.search(r"^\[project\.urls\]\n((?:[^\[\n].*\n)+)", PYPROJECT, re.MULTILINE)
    assert match is not None, "pyproject.toml has no [project.urls]"
    return dict(re.findall(r'^(\w+) = "([^"]+)"$', match[1], re.MULTILINE))


def _console_lines(text: str) -> list[str]:
    blocks = re.findall(r"^```console\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    return [line for block in blocks for line in block.splitlines()]


def test_metadata_points_to_docs_source_and_changelog() -> None:
    urls = _project_urls()
    assert set(urls) >= {"Documentation", "Source", "Changelog"}
    assert all(url.startswith("https://") for url in urls.values())
    assert urls["Changelog"].endswith("/CHANGELOG.md")


def test_license_file_is_the_mit_text_the_metadata_names() -> None:
    assert re.search(r'^license = "MIT"$', PYPROJECT, re.MULTILINE)
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 fastapi-tasks developers" in text
    assert "Permission is hereby granted, free of charge, to any person" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND' in text


def test_changelog_runs_from_0_1_0_to_this_version() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    versions = re.findall(r"^## (\d+\.\d+\.\d+)", text, re.MULTILINE)
    assert versions[0] == _version()
    assert versions[-2:] == ["0.2.0", "0.1.0"]
    assert "### Moving from 0.1.0" in text
    # The comparison page sends readers there instead of keeping its own copy.
    comparison = (ROOT / "docs" / "comparison.md").read_text(encoding="utf-8")
    assert _project_urls()["Changelog"] in comparison
    assert "## Differences from the 0.1.0 API" in comparison


def test_docs_say_which_version_they_describe_and_how_to_install_it() -> None:
    version = _version()
    for name in ("README.md", "docs/getting-started.md"):
        text = (ROOT / name).read_text(encoding="utf-8")
        assert f"describes fastapi-tasks {version}" in text, name
        assert "fastapi-tasks 0.1.0 is a different, older API" in " ".join(text.split()), name
        assert f"dist/fastapi_tasks-{version}-py3-none-any.whl" in text, name
        assert any("pip install /path/to/fastapi-tasks" in line for line in _console_lines(text))


def test_no_install_command_fetches_the_older_release_from_pypi() -> None:
    for page in PAGES:
        for line in _console_lines(page.read_text(encoding="utf-8")):
            assert not re.search(r"pip install [\"']?fastapi-tasks\b", line), (page.name, line)


def test_readme_puts_the_quickstart_first_and_reads_without_mkdocs() -> None:
    assert README.index("## Quickstart") < README.index("## Working on fastapi-tasks")
    assert README.index("```python") < README.index("scripts/test")
    assert "scripts/demo" in README
    assert "scripts/test" in README
    # Syntax only the documentation site understands.
    for marker in ("!!! ", "??? ", "][fastapi_tasks.", "\n::: ", "--8<--", "{: "):
        assert marker not in README, marker


def test_after_route_work_is_never_said_to_finish_before_the_response() -> None:
    sources = [*PAGES, ROOT / "CHANGELOG.md", *sorted((ROOT / "examples").glob("*.py"))]
    for source in sources:
        text = " ".join(source.read_text(encoding="utf-8").split())
        for phrase in ("before the response goes out", "before the response is sent"):
            assert phrase not in text, (source.name, phrase)


def test_build_script_makes_a_wheel_and_sdist_a_packager_can_use(tmp_path: Path) -> None:
    completed = subprocess.run(
        [str(ROOT / "scripts" / "build"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    version = _version()
    wheel = tmp_path / f"fastapi_tasks-{version}-py3-none-any.whl"
    sdist = tmp_path / f"fastapi_tasks-{version}.tar.gz"
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([sdist.name, wheel.name])

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(f"fastapi_tasks-{version}.dist-info/METADATA").decode()
    assert "fastapi_tasks/py.typed" in names
    assert f"fastapi_tasks-{version}.dist-info/licenses/LICENSE" in names
    for label, url in _project_urls().items():
        assert f"Project-URL: {label}, {url}" in metadata
    with tarfile.open(sdist) as archive:
        members = {
            Path(name).relative_to(f"fastapi_tasks-{version}").as_posix()
            for name in archive.getnames()
        }
    assert {"LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml"} <= members


def test_pages_refer_only_to_documents_the_reader_has() -> None:
    # The project's internal specification and reviews are not published with the docs.
    for page in [*PAGES, ROOT / "CHANGELOG.md", ROOT / "CONTRIBUTING.md"]:
        text = page.read_text(encoding="utf-8")
        for name in ("SPEC", "CONVENTIONS.md", "shared/reviews"):
            assert name not in text, (page.name, name)


def test_benchmarks_page_explains_its_targets_and_keeps_code_whole_in_tables() -> None:
    page = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    assert page.index("## Targets\n") < page.index("## Targets and results\n")
    css = (ROOT / "docs" / "stylesheets" / "extra.css").read_text(encoding="utf-8")
    assert re.search(r"table:not\(\[class\]\) code \{[^}]*word-break: normal", css)
    assert "stylesheets/extra.css" in (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
