"""The three layers a newcomer sees: the core library imports no Dagster; the Dagster face
lives in ``ref_assets/defs/`` and the command line in ``ref_assets/cli/``."""

import ast
from pathlib import Path

import ref_assets

PACKAGE = Path(ref_assets.__file__).parent
# The code location's entry point, at the root module as in Dagster's project layout.
DAGSTER_ENTRY_POINT = PACKAGE / "definitions.py"


def _imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def test_the_core_library_imports_no_dagster():
    core = [
        path
        for path in PACKAGE.rglob("*.py")
        if path != DAGSTER_ENTRY_POINT and path.relative_to(PACKAGE).parts[0] not in ("defs", "cli")
    ]
    assert len(core) > 20  # the walk found the core
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(
            m
            for m in _imported_modules(path)
            if m.split(".")[0].startswith("dagster")
            or m.startswith(("ref_assets.defs", "ref_assets.cli", "ref_assets.definitions"))
        )
        for path in core
    }
    assert {path: found for path, found in offenders.items() if found} == {}
