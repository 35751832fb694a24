"""The import direction of evo's packages (design.md, "Packages and their rooms"), checked over `ast`.

Every `import` in every evo module counts, including those inside functions and `TYPE_CHECKING`
blocks: a lazy import still ties the layers together. A module may import its own unit and units
of a lower layer only; units sharing a layer do not import each other.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import evo

ROOT = Path(evo.__file__).parent

# Lowest first. `evo.runs` sits just above the graph: it may import the graph (and errors) only.
LAYERS: list[set[str]] = [
    {"evo.errors", "evo.fsutil"},
    {"evo.checks"},
    {"evo.registry"},
    {"evo.graph"},
    {"evo.runs"},
    {"evo.zoo", "evo.data"},
    {"evo.ops"},
    {"evo.learn"},
    {"evo.active"},
    {"evo.search", "evo.serve", "evo.learn_run"},
    {"evo.analysis", "evo.plots"},
    {"evo.report"},
    {"evo.cli"},
]
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def unit_of(module: str) -> str | None:
    """The layered unit a dotted module belongs to (`evo.learn.train` → `evo.learn`); None for others."""
    parts = module.split(".")
    if parts[0] != "evo":
        return None
    if len(parts) == 1:
        return "evo"
    return f"evo.{parts[1]}"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import statement in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base == "evo":  # `from evo import zoo` imports the subpackage evo.zoo
                out += [(node.lineno, f"evo.{a.name}" if f"evo.{a.name}" in RANK else "evo") for a in node.names]
            else:
                out.append((node.lineno, base))
    return out


def violations(paths: list[Path]) -> list[str]:
    found = []
    for path in paths:
        me = unit_of(module_name(path))
        if me == "evo":  # the package root loads subpackages lazily by name; it is above everything
            continue
        if me not in RANK:
            found.append(f"{path.relative_to(ROOT.parent)}: module unit {me!r} has no layer in LAYERS")
            continue
        for line, target in imports(path):
            other = unit_of(target)
            if other is None or other == me:
                continue
            if other == "evo":
                found.append(f"{path.relative_to(ROOT.parent)}:{line}: `import evo` hides which layer it "
                             "uses; import the subpackage (e.g. `import evo.zoo`)")
            elif other not in RANK:
                found.append(f"{path.relative_to(ROOT.parent)}:{line}: imports {target}, which has no layer")
            elif RANK[other] >= RANK[me]:
                found.append(f"{path.relative_to(ROOT.parent)}:{line}: {me} (layer {RANK[me]}) imports "
                             f"{target} (layer {RANK[other]}); dependencies point down only")
    return found


def evo_files() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_evo_module_imports_only_lower_layers() -> None:
    bad = violations(evo_files())
    assert not bad, "import direction broken:\n" + "\n".join(bad)


def test_rule_covers_packages_being_built() -> None:
    # evo.active and evo.serve may not exist yet in this checkout; the rule already places them
    assert RANK["evo.learn"] < RANK["evo.active"] < RANK["evo.search"] == RANK["evo.serve"] < RANK["evo.cli"]
    assert RANK["evo.graph"] < RANK["evo.runs"] < RANK["evo.zoo"]


@pytest.mark.parametrize("source, bad", [
    ("from evo.learn.features import Tap\n", True),          # an operator reaching up into learn
    ("def f():\n    from evo.cli import main\n", True),      # a lazy import counts too
    ("from evo.graph.taps import Tap\n", False),
    ("from . import base\n", False),                          # its own package
    ("import evo\n", True),
])
def test_checker_catches_upward_imports(tmp_path, monkeypatch, source: str, bad: bool) -> None:
    pkg = tmp_path / "evo" / "ops"
    pkg.mkdir(parents=True)
    (tmp_path / "evo" / "__init__.py").write_text("")
    f = pkg / "probe.py"
    f.write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path / "evo")
    assert bool(violations([f])) is bad
