"""The shape of the code, checked: layers that point one way, no import cycle, short functions.

The contracts live in pyproject.toml ([tool.importlinter]); `lint-imports` checks them by hand.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lmforge"

# Packages whose functions must stay short: the training code and the planner in phases.
SHORT_FUNCTION_PACKAGES = ("trainer", "auto")
MAX_FUNCTION_LINES = 80


def test_import_contracts_are_kept():
    # What `lint-imports` runs, in its own process (it changes sys.path and logging). No cache: no
    # folder written into the checkout, and no stale graph read from one.
    code = ("import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    assert "3 kept, 0 broken" in report, report  # every contract was found and checked


def test_no_import_cycle_between_modules():
    graph = grimp.build_graph("lmforge", cache_dir=None)  # function-level imports count too
    cycles = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back:
                cycles.append(" -> ".join((importer, *back)))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def _imported_names(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_model_code_is_single_device():
    # import-linter cannot forbid part of an external package, so this one is read from the source.
    # Parallelism (DDP, process groups) is applied from outside, in trainer/runtime.py.
    found = []
    for path in sorted((PACKAGE / "models").rglob("*.py")):
        for name in _imported_names(ast.parse(path.read_text(encoding="utf-8"))):
            if name.startswith(("torch.distributed", "torch.nn.parallel")):
                found.append(f"{path.relative_to(ROOT)}: {name}")
    assert not found, found


@pytest.mark.parametrize("package", SHORT_FUNCTION_PACKAGES)
def test_no_function_over_80_lines(package):
    long = []
    for path in sorted((PACKAGE / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_help_needs_no_pytorch():
    # `lmforge --help` and every command's help are argument definitions only: importing PyTorch would
    # cost seconds of every start (it did, through the fine-tuning settings).
    code = ("import sys\nfrom lmforge.cli import main\n"
            "for args in (['--help'], ['train', '--help'], ['sft', '--help'], ['classify', 'train', '--help']):\n"
            "    try:\n        main(args)\n    except SystemExit:\n        pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"
