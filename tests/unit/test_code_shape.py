"""The house rules a newcomer relies on: small modules, short functions, citations that resolve.

No module of the packages passes 600 lines and no function 80 (counted from ``def`` to its last
line, docstring and decorators' arguments excluded from nothing: the whole node); every ``*.md``
file that code, tests, benchmarks or tools name exists in the repository.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipnet_core", "annotations", "flows", "synthetic_faces")
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
CODE_DIRS = (*PACKAGES, "bench", "tests", "tools", "scripts", ".ci")
# Files the code writes (a round's report, the import-file README, the STC benchmark's report), not documents
# it cites.
PRODUCED = {"report.md", "README.md", "stc.md", "simulation.md"}


def _package_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def long_functions(path: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``module:function (lines)`` for every function of ``path`` longer than ``limit`` lines."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            n = node.end_lineno - node.lineno + 1
            if n > limit:
                out.append(f"{path.relative_to(ROOT)}:{node.name} ({n} lines)")
    return out


def test_no_module_over_600_lines() -> None:
    big = [f"{p.relative_to(ROOT)} ({n})" for p in _package_files() if (n := len(p.read_text().splitlines())) > 600]
    assert not big, f"split these modules (one concept per module, under {MAX_MODULE_LINES} lines): {big}"


def test_no_function_over_80_lines() -> None:
    long = [f for p in _package_files() for f in long_functions(p)]
    assert not long, f"split these functions (at most {MAX_FUNCTION_LINES} lines, def to last line): {long}"


def test_the_checker_catches_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    path = ROOT / ".work" / "shape_probe.py"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"def probe():\n{body}\n")
    try:
        assert long_functions(path) == [".work/shape_probe.py:probe (81 lines)"]
    finally:
        path.unlink()


_MD = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w.-]+\.md)\b")


def cited_documents(text: str) -> set[str]:
    """Every ``something.md`` named in ``text`` (paths as written)."""
    return set(_MD.findall(text))


def _exists(name: str) -> bool:
    """A path relative to the repository root, or a bare name that is a file in docs/ or bench/."""
    if (ROOT / name).is_file():
        return True
    return "/" not in name and any((ROOT / d / name).is_file() for d in ("docs", "bench"))


def test_every_cited_document_is_in_the_repository() -> None:
    missing = {}
    for folder in CODE_DIRS:
        for path in (ROOT / folder).rglob("*"):
            if path.suffix not in (".py", ".sh", ".yaml", "") or not path.is_file() or ".venv" in path.parts:
                continue
            if path.name == Path(__file__).name:
                continue  # this file's own examples
            for name in cited_documents(path.read_text(errors="ignore")):
                if Path(name).name not in PRODUCED and not _exists(name):
                    missing.setdefault(name, []).append(str(path.relative_to(ROOT)))
    assert not missing, f"code cites documents that are not in the repository: {missing}"


def test_citation_finder_sees_paths_and_bare_names() -> None:
    text = "see docs/algorithm.md section 2 and PIPNET_SPEC.md; not a.mdx"
    assert cited_documents(text) == {"docs/algorithm.md", "PIPNET_SPEC.md"}
