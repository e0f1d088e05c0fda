"""dvc.yaml stays honest: each stage's code deps are exactly the project modules its command imports
(transitively), and its params are exactly the keys the stage reads."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "ecg", "vision")


def module_file(name: str) -> Path | None:
    path = ROOT / Path(*name.split("."))
    for cand in (path.with_suffix(".py"), path / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def local_imports(path: Path) -> set[str]:
    """Project modules named by the import statements of one file (lazy imports inside functions too)."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PACKAGES and module_file(name) is not None:
                found.add(name)
    return found


def closure(module: str) -> set[Path]:
    """Files of `module` and every project module it imports, transitively (package __init__s excluded
    when empty)."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        path = module_file(name)
        if path is None or path in seen:
            continue
        seen.add(path)
        todo.extend(local_imports(path))
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages run first
    return {p for p in seen if not (p.name == "__init__.py" and not p.read_text().strip())}


def stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def code_deps(stage: dict) -> set[Path]:
    out = set()
    for dep in stage.get("deps", []):
        path = ROOT / dep
        if path.suffix == ".py":
            out.add(path)
        elif path.is_dir() and path.name not in ("data",) and path.parts[-2:][0] in PACKAGES + ("pipeline",):
            out.update(p for p in path.rglob("*.py") if p.read_text().strip() or p.name != "__init__.py")
    return out


def command_module(cmd: str) -> str:
    m = re.search(r"python -m ([\w.]+)", cmd)
    assert m, f"stage command {cmd!r} does not run a project module"
    name = m.group(1)
    return name if module_file(name) is None or module_file(name).name != "__init__.py" else f"{name}.__main__"


@pytest.mark.parametrize("name", sorted(stages()))
def test_code_deps_match_imports(name):
    stage = stages()[name]
    stage = stage.get("do", stage)
    want = closure(command_module(stage["cmd"]))
    if name == "report":  # arm descriptors are loaded by name: <arm>.report for each metrics/<arm>/
        want |= {p for arm in ("ecg", "vision") for p in closure(f"{arm}.report")}
    have = code_deps(stage)
    rel = lambda paths: sorted(str(p.relative_to(ROOT)) for p in paths)  # noqa: E731
    assert rel(want - have) == [], f"{name}: imported but not in deps"
    assert rel(have - want) == [], f"{name}: in deps but not imported"


def test_no_stage_depends_on_grid_or_whole_sections():
    for name, stage in stages().items():
        stage = stage.get("do", stage)
        for p in stage.get("params", []):
            key = p if isinstance(p, str) else next(iter(p))
            assert not str(key).startswith("grid"), f"{name} depends on the grid section"
            assert "." in str(key), f"{name} depends on the whole section {key!r}"
