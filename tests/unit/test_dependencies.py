"""Dependencies (issue 11 item 24): what the code imports is declared; optional features are extras, clear errors."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipnet_core", "annotations", "flows", "synthetic_faces", "tools")
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
OPTIONAL = {"prefect_dask": "dask", "yaml": "yaml"}  # import name -> the extra that installs it


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", Requirement(requirement).name).lower()


def _imports(top_level_only: bool) -> dict[str, set[str]]:
    """Third-party import roots of the packages -> the files importing them (module level only, or anywhere)."""
    found: dict[str, set[str]] = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            tree = ast.parse(path.read_text())
            nodes = tree.body if top_level_only else list(ast.walk(tree))
            for node in nodes:
                if isinstance(node, ast.Import):
                    roots = [a.name.split(".")[0] for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    roots = [node.module.split(".")[0]]
                else:
                    continue
                for root in roots:
                    if root not in sys.stdlib_module_names and root not in PACKAGES and root != "__future__":
                        found.setdefault(root, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_imported_package_is_declared() -> None:
    hard = {_name(r) for r in PROJECT["dependencies"]}
    extras = {_name(r) for k, reqs in PROJECT["optional-dependencies"].items() if k != "dev" for r in reqs}
    dists = packages_distributions()
    undeclared = {}
    for module, files in _imports(top_level_only=False).items():
        names = {re.sub(r"[-_.]+", "-", d).lower() for d in dists.get(module, [module])}
        if not names & (hard | extras):
            undeclared[module] = sorted(files)
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
    assert "httpx" in hard  # annotations/review/client.py imports it directly, not only through the SDK


def test_label_studio_sdk_is_a_compatible_range_not_a_pin() -> None:
    (sdk,) = [Requirement(r) for r in PROJECT["dependencies"] if _name(r) == "label-studio-sdk"]
    assert not any(s.operator == "==" for s in sdk.specifier)
    assert sdk.specifier.contains(Version("2.1.2")) and sdk.specifier.contains(Version("2.1.9"))
    # the floor keeps uv from backtracking to 2.0.x; the cap keeps an untested minor out
    assert not sdk.specifier.contains(Version("2.0.19")) and not sdk.specifier.contains(Version("2.2.0"))


def test_optional_features_are_extras_imported_only_where_used() -> None:
    hard = {_name(r) for r in PROJECT["dependencies"]}
    extras = PROJECT["optional-dependencies"]
    assert {_name(r) for r in extras["dask"]} == {"prefect-dask"} and {_name(r) for r in extras["yaml"]} == {"pyyaml"}
    assert not {"prefect-dask", "pyyaml"} & hard
    assert any(_name(r) == "pipstc" and {"dask", "yaml"} <= Requirement(r).extras for r in extras["dev"])
    top_level = _imports(top_level_only=True)
    assert not set(OPTIONAL) & set(top_level), "an optional package imported at module level breaks plain installs"
    assert '-e ".[dev]"' in (ROOT / "scripts" / "setup.sh").read_text()  # the tests need both extras


def test_dask_pool_labeling_without_prefect_dask_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.config import STCConfig
    from flows.errors import MissingExtra, explain
    from flows.stc import _task_runner

    monkeypatch.setitem(sys.modules, "prefect_dask", None)  # what `import prefect_dask` meets when not installed
    with pytest.raises(MissingExtra) as err:
        _task_runner(STCConfig(dask_address="tcp://127.0.0.1:8786"))
    (line,), code = explain(err.value)
    assert code == 2 and line.endswith("needs the Python package 'prefect-dask', which is not installed — pip install "
                                       "'pipstc[dask]'")  # fmt: skip


def test_a_yaml_scheme_without_pyyaml_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipnet_core.schemes import SchemeError, load_scheme

    path = tmp_path / "eyes4.yaml"
    path.write_text("name: eyes4\nnum_landmarks: 4\nflip: null\nnorm: box\n")
    assert load_scheme(path).num_landmarks == 4
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(SchemeError, match=re.escape("pip install 'pipstc[yaml]', or write the scheme as JSON")):
        load_scheme(path)


def test_a_broken_yaml_scheme_is_a_scheme_error(tmp_path: Path) -> None:
    from pipnet_core.schemes import SchemeError, load_scheme

    path = tmp_path / "bad.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(SchemeError, match="not valid YAML"):
        load_scheme(path)
