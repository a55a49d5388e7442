"""docs/architecture.md agrees with the tree: its module map names every module of the package, and only
modules that exist, each under its own package's heading; its data flow names every verb.

No model and no server: the test reads the document, the package's files and the CLI's verb table.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

from alignchat.cli import VERBS

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"
PACKAGE = ROOT / "alignchat"

ROW = re.compile(r"^\|\s*`(alignchat/[^`]*)`\s*\|(.*)\|\s*$")  # | `alignchat/x.py` | what it is |
PACKAGE_HEADING = re.compile(r"^###\s+`(alignchat/[^`]*)`")      # ### `alignchat/engine/`: ...


def section(text: str, title: str) -> str:
    """The text of the `## title` section, up to the next `## ` heading."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == f"## {title}"]
    assert len(starts) == 1, f"docs/architecture.md must have exactly one '## {title}' section"
    body = []
    for line in lines[starts[0] + 1:]:
        if line.startswith("## "):
            break
        body.append(line)
    return "\n".join(body)


def map_rows(text: str) -> list[tuple[str, str, str | None]]:
    """(path, description, package heading above it) for each row of the module map."""
    rows, heading = [], None
    for line in section(text, "Module map").splitlines():
        h = PACKAGE_HEADING.match(line)
        if h:
            heading = h.group(1)
            continue
        m = ROW.match(line)
        if m:
            rows.append((m.group(1), m.group(2).strip(), heading))
    return rows


def holds_code(init: Path) -> bool:
    """Whether a package's `__init__.py` holds more than its docstring, imports and `__all__`/`__version__`."""
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) and t.id in ("__all__", "__version__")
                                                for t in node.targets):
            continue
        return True
    return False


def package_modules() -> set[str]:
    """Every module of the package by its path from the repository root, without code-free `__init__.py`s."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        if path.name == "__init__.py" and not holds_code(path):
            continue
        found.add(path.relative_to(ROOT).as_posix())
    return found


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def test_every_module_of_the_package_is_on_the_map():
    listed = {path for path, _, _ in map_rows(doc_text())}
    modules = package_modules()
    assert len(modules) > 50  # the walk found the package, not an empty folder
    missing = sorted(modules - listed)
    assert not missing, f"modules missing from docs/architecture.md's module map: {missing}"


def test_every_line_of_the_map_is_one_existing_module_under_its_package():
    rows = map_rows(doc_text())
    assert rows, "docs/architecture.md's module map has no rows"
    paths = [path for path, _, _ in rows]
    duplicates = sorted({p for p in paths if paths.count(p) > 1})
    assert not duplicates, f"listed more than once: {duplicates}"
    for path, description, heading in rows:
        assert path.endswith(".py"), f"{path}: a line of the map names one module (a .py file)"
        assert (ROOT / path).is_file(), f"{path} is on the module map but does not exist"
        assert description, f"{path}: no description"
        assert heading is not None, f"{path} sits above every package heading"
        if heading == "alignchat/":
            assert "/" not in path.removeprefix("alignchat/"), f"{path} is under the core heading, not its package's"
        else:
            assert path.startswith(heading), f"{path} is under the heading of {heading}"


def test_the_data_flow_names_every_verb():
    flow = section(doc_text(), "Data flow")
    blocks = re.findall(r"```\n(.*?)```", flow, flags=re.S)
    assert len(blocks) == 1, "the data flow is one diagram in one code block"
    diagram = blocks[0]
    assert "──[" in diagram and "]──" in diagram  # arrows labelled with their file format
    # a verb is a node: at the start of a line, after wide spacing, in a list (", ", "| ") or at an arrow's
    # head, never a word inside a label ("library dir", "docs/library.md")
    node = r"(?:^|  |, |\| |\(|──► )"
    missing = [verb for verb in VERBS
               if not re.search(rf"{node}{re.escape(verb)}(?![\w./-])", diagram, flags=re.M)]
    assert not missing, f"verbs missing from the data flow diagram: {missing}"
