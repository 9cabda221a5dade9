"""The code's large-scale shape, checked: import contracts, no cycles, small modules and
functions, a launcher that imports only the standard library at module level, and one
source of truth for the hyperparameters."""

import ast
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

from runs.hyperparameters import HYPERPARAMETERS
from runs.models import TunixRun

REPO = Path(__file__).resolve().parent.parent
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
# A long module or function says why in a comment that starts with this marker.
LONG_MARKER = "# long:"


def project_modules():
    for package in ("runs", "tunixrt"):
        for path in sorted((REPO / package).rglob("*.py")):
            if "migrations" not in path.parts:
                yield path


def test_the_import_contracts_hold():
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert "broken" not in done.stdout.lower().split("contracts:")[-1].split(",")[0]


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of modules that import each other in a circle."""
    index, low, stack, on_stack, groups, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for node in list(graph):
        if node not in index:
            visit(node)
    return groups


def test_no_module_imports_itself_in_a_circle_counting_imports_inside_functions():
    graph = grimp.build_graph("runs", "tunixrt")
    edges = {
        module: set(graph.find_modules_directly_imported_by(module)) for module in graph.modules
    }
    assert strongly_connected(edges) == []


def test_the_cycle_check_can_fail():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def long_allowed(lines: list[str], start: int) -> bool:
    """A `# long:` comment on the line before the definition (or its decorators)."""
    return start >= 2 and lines[start - 2].strip().startswith(LONG_MARKER)


@pytest.mark.parametrize("path", list(project_modules()), ids=lambda p: str(p.relative_to(REPO)))
def test_modules_and_functions_stay_small(path):
    text = path.read_text()
    lines = text.splitlines()
    if len(lines) > MAX_MODULE_LINES:
        assert LONG_MARKER in "\n".join(lines[:20]), f"{len(lines)} lines: split it or say why"
    too_long = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = node.end_lineno - start + 1
            if length > MAX_FUNCTION_LINES and not long_allowed(lines, start):
                too_long.append(f"{node.name} ({length} lines)")
    assert too_long == []


def module_level_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0] if node.module != "runs" else "runs")
            if node.module and node.module.startswith("runs"):
                names.add(node.module)
    return names


@pytest.mark.parametrize(
    "path",
    sorted((REPO / "runs" / "launcher").rglob("*.py")) + [REPO / "runs" / "protocol.py"],
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_the_launcher_imports_only_the_standard_library_at_module_level(path):
    launcher = REPO / "runs" / "launcher"
    allowed_app = {"runs", "runs.protocol"} | {
        ".".join(("runs", "launcher", *p.relative_to(launcher).with_suffix("").parts))
        for p in launcher.rglob("*.py")
    }
    allowed_app |= {name.removesuffix(".__init__") for name in allowed_app}
    for name in module_level_imports(path):
        if name.startswith("runs"):
            assert name in allowed_app, name
        else:
            assert name in sys.stdlib_module_names, name


def test_the_model_has_a_field_of_the_right_kind_for_every_hyperparameter():
    fields = {field.name: field for field in TunixRun._meta.get_fields()}
    for name, bound in HYPERPARAMETERS.items():
        assert name in fields, f"TunixRun has no field {name}"
        field = fields[name]
        assert field.null == bound.optional, name
        kind = {float: "FloatField", int: "PositiveIntegerField", str: "CharField"}[bound.kind]
        assert field.get_internal_type() == kind, name
        if bound.choices:
            assert [value for value, _ in field.choices] == list(bound.choices), name
        if bound.kind is str and not bound.choices:
            assert field.max_length == bound.maximum, name
        if bound.kind is int:
            assert bound.minimum >= 0 and bound.maximum <= 2**31 - 1, name
