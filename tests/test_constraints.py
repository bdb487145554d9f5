"""Reproducible installs: every Python package the README commands install is pinned in
constraints.txt, and every documented or scripted `pip install` of dependencies uses it."""

from __future__ import annotations

import re

from tests.conftest import REPO


def _name(spec: str) -> str:
    return re.split(r"[<>=!~\[; ]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_every_requirement_has_an_exact_pin():
    pins = {
        _name(line): line
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for line in pins.values():
        assert "==" in line, f"constraints.txt: {line!r} is not an exact pin"
    wanted = [
        _name(line.split("#")[0])
        for line in (REPO / "requirements.txt").read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    missing = [n for n in [*wanted, "torch", "sentence-transformers"] if n not in pins]
    assert not missing, f"not pinned in constraints.txt: {missing}"


def test_every_pip_install_of_dependencies_uses_the_constraints():
    """README's commands and the set-up script: a `pip install` that pulls dependencies passes -c
    constraints.txt (the editable install of this package itself, --no-deps, pulls none)."""
    offenders = []
    for path in [
        REPO / "README.md",
        *sorted((REPO / "docs").glob("*.md")),
        *sorted((REPO / "scripts").glob("*.sh")),
    ]:
        for k, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0].strip()
            if path.suffix == ".md" and not re.match(r"(\S*python\S* -m )?pip3? install\b", code):
                continue  # prose, not a command
            if not re.search(r"\bpip\S*\"?\]?\}?\"? install\b", code) or "--no-deps" in code:
                continue
            if "-c " not in code and "${pin[@]}" not in code:
                offenders.append(f"{path.relative_to(REPO)}:{k}: {line.strip()}")
    assert not offenders, "pip install without the constraints:\n" + "\n".join(offenders)
