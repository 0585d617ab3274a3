"""The distribution: a name of its own on PyPI, its license, extras that match the features, and every
install command in the docs, the README and the error messages naming them correctly."""

from __future__ import annotations

import re
import tomllib

from conftest import REPO_ROOT

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
#: Where a user reads an install command: the docs, the README, and the messages of the packages.
SOURCES = [REPO_ROOT / "README.md", *(REPO_ROOT / "docs").glob("*.md"), *(REPO_ROOT / "agentflow").rglob("*.py"),
           *(REPO_ROOT / "agentcli").rglob("*.py")]  # fmt: skip


def test_the_distribution_has_a_name_of_its_own_and_the_extras_match_the_features() -> None:
    project = PYPROJECT["project"]
    assert project["name"] == "agentflow-runner"  # "agentflow" on PyPI is someone else's
    assert set(project["optional-dependencies"]) == {"kafka", "redis", "mcp", "otel", "dev"}
    otel = project["optional-dependencies"]["otel"]
    assert any(d.startswith("opentelemetry-api") for d in otel) and any(d.startswith("opentelemetry-sdk") for d in otel)
    assert project["license"] == {"text": "Apache-2.0"}


def test_the_license_is_there() -> None:
    text = (REPO_ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    vendored = REPO_ROOT / "agentcli" / "vendor" / "uplot" / "LICENSE"
    assert "The MIT License" in vendored.read_text(encoding="utf-8")
    assert "vendor/uplot/*" in PYPROJECT["tool"]["setuptools"]["package-data"]["agentcli"]


def test_every_install_command_names_the_distribution_and_an_existing_extra() -> None:
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    wrong, unknown = [], []
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"(?<![\w-])agentflow\[(\w+)\]", text):
            wrong.append(f"{path.relative_to(REPO_ROOT)}: {m.group(0)}")
        for m in re.finditer(r"agentflow-runner\[(\w+)\]", text):
            if m.group(1) not in extras:
                unknown.append(f"{path.relative_to(REPO_ROOT)}: {m.group(0)}")
        for m in re.finditer(r"pip install (?:-U )?agentflow(?![\w\[-])", text):
            wrong.append(f"{path.relative_to(REPO_ROOT)}: {m.group(0)}")
    assert wrong == [], "install commands must name the distribution agentflow-runner"
    assert unknown == []
