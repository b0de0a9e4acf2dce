"""The package layers: each part of medclassify imports only the parts below it, so that the pipeline
reads bottom-up (data -> models -> evaluation -> training -> ... -> serve -> cli) and no import has
to be deferred to dodge a cycle."""

import ast
from pathlib import Path

import medclassify

# lowest first; a module may import from its own layer's package and from any layer below
LAYERS = [
    {"defaults", "errors", "io", "tasks", "runtime", "citation"},
    {"data"},
    {"models"},
    {"evaluation"},
    {"config"},
    {"runs"},
    {"training"},
    {"inference"},
    {"experiments"},
    {"reporting"},
    {"explain"},
    {"serve"},
    {"cli", "__main__"},
]
PACKAGE = Path(medclassify.__file__).parent


def layer_of(part: str) -> int:
    for level, names in enumerate(LAYERS):
        if part in names:
            return level
    raise AssertionError(f"medclassify.{part} is in no layer: add it to LAYERS")


def imported_parts(path: Path) -> list[tuple[int, str]]:
    """(line, top-level part of medclassify) of every relative import in the module, deferred ones
    included; imports only for type checkers are not run and do not count."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
        for n in ast.walk(node)
    }
    inside = path.relative_to(PACKAGE).with_suffix("").parts
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level and id(node) not in type_only:
            base = list(inside[:-1])[: len(inside) - node.level]
            target = base + (node.module.split(".") if node.module else [])
            if target:
                found.append((node.lineno, target[0]))
    return found


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if own == "__init__":
            continue  # the package's lazy attribute table names every part without importing it
        for line, part in imported_parts(path):
            if part != own and layer_of(part) > layer_of(own):
                upward.append(
                    f"{path.relative_to(PACKAGE)}:{line} imports {part} (layer {layer_of(part)} > {own}, layer {layer_of(own)})"
                )
    assert not upward, "\n".join(upward)


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    fake = tmp_path / "medclassify"
    (fake / "data").mkdir(parents=True)
    (fake / "data" / "loading.py").write_text("def f():\n    from ..training import train\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    assert imported_parts(fake / "data" / "loading.py") == [(2, "training")]
    assert layer_of("training") > layer_of("data")
