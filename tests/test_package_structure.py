"""The package's layout and conventions (scanpy's ``test_package_structure`` is the model).

- stage packages are faces (``__init__.py`` with ``__all__``) over private ``_topic.py`` modules;
- the core never imports a front end (``compat/``, ``api/``, ``cli/``), not even inside a function;
- no import cycle between modules;
- every public name of a face exists and is documented; public functions have type hints;
- no source file over ~500 lines without a reason stated at its top.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

import geneformer

PKG_DIR = Path(geneformer.__file__).parent
FRONT_ENDS = ("geneformer.compat", "geneformer.api", "geneformer.cli")
MAX_LINES = 500
LONG_FILE_MARKER = "long file:"  # the module docstring says why, after this phrase


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG_DIR.rglob("*.py")):
        rel = path.relative_to(PKG_DIR.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()
PACKAGES = sorted(m for m, p in MODULES.items() if p.name == "__init__.py")


def _resolve(module: str, is_pkg: bool, level: int, name: str | None) -> str:
    if not level:
        return name or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _imports(module: str, top_level_only: bool) -> set[str]:
    """geneformer modules that ``module`` imports (the most specific module each import names)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # include imports nested in top-level if/try blocks, not in functions
        nodes = [n for stmt in tree.body if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                   ast.ClassDef))
                 for n in ast.walk(stmt)]
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, path.name == "__init__.py", node.level, node.module)
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        found.update(n for n in names if n in MODULES and n != module)
    return found


def _is_front_end(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FRONT_ENDS)


def test_core_never_imports_a_front_end():
    offenders = {m: sorted(i for i in _imports(m, top_level_only=False) if _is_front_end(i))
                 for m in MODULES if not _is_front_end(m) and m != "geneformer"}
    offenders = {m: i for m, i in offenders.items() if i}
    assert not offenders, f"core modules importing front ends: {offenders}"


def test_top_level_face_names_front_ends_only_lazily():
    # `import geneformer` must stay light: the face maps names to modules and imports on first use
    assert not {i for i in _imports("geneformer", top_level_only=True) if i != "geneformer._settings"}


def test_no_import_cycles():
    graph = {m: _imports(m, top_level_only=True) for m in MODULES}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    # a package face importing its own private modules is not a cycle a reader has to untangle
    real = [c for c in cycles if not all(p.startswith(c[0].rsplit(".", 1)[0]) for p in c)]
    assert not real, f"import cycles: {real[:5]}"


@pytest.mark.parametrize("package", [p for p in PACKAGES if p != "geneformer"])
def test_stage_packages_are_faces_over_private_modules(package):
    """Modules inside a package are private (``_topic.py``), except the command-line entry points."""
    pkg_dir = MODULES[package].parent
    public = sorted(p.name for p in pkg_dir.glob("*.py") if p.name != "__init__.py" and not p.name.startswith("_"))
    if package == "geneformer.cli":  # `python -m geneformer.cli.embed` and friends are entry points
        return
    assert not public, f"{package} has public modules {public}; make them private and re-export from the face"


@pytest.mark.parametrize("package", PACKAGES)
def test_faces_declare_and_document_their_names(package):
    mod = importlib.import_module(package)
    names = getattr(mod, "__all__", None)
    assert names is not None, f"{package} has no __all__"
    assert len(names) == len(set(names)), f"{package}.__all__ repeats names"
    missing = [n for n in _face_names(mod) if not hasattr(mod, n)]
    assert not missing, f"{package}.__all__ names missing attributes: {missing}"
    undocumented = []
    for name in _face_names(mod):
        obj = getattr(mod, name)
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and not (obj.__doc__ or "").strip():
            undocumented.append(name)
    assert not undocumented, f"{package}: public names without a docstring: {undocumented}"


def _face_names(mod) -> list[str]:
    # the top-level face's dictionary-file constants resolve files (and may reach the hub) on access
    return [n for n in getattr(mod, "__all__", []) if n not in getattr(mod, "_DICT_CONSTANTS", {})]


def _public_functions():
    for package in PACKAGES:
        mod = importlib.import_module(package)
        for name in _face_names(mod):
            obj = getattr(mod, name)
            if inspect.isfunction(obj) and obj.__module__.startswith("geneformer"):
                yield f"{package}.{name}", obj


@pytest.mark.parametrize("qualname,func", list(_public_functions()), ids=lambda x: x if isinstance(x, str) else "")
def test_public_functions_have_type_hints(qualname, func):
    sig = inspect.signature(func)
    unhinted = [p.name for p in sig.parameters.values()
                if p.annotation is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                and p.name not in ("self", "cls")]
    assert not unhinted, f"{qualname}: parameters without type hints: {unhinted}"
    assert sig.return_annotation is not inspect.Signature.empty, f"{qualname} has no return annotation"


def test_doc_placeholders_are_filled():
    for qualname, func in _public_functions():
        assert "{emb_layer}" not in (func.__doc__ or "") and "{device}" not in (func.__doc__ or ""), qualname


@pytest.mark.parametrize("module", sorted(MODULES))
def test_source_files_stay_short(module):
    path = MODULES[module]
    n = len(path.read_text().splitlines())
    if n <= MAX_LINES:
        return
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert LONG_FILE_MARKER in doc.lower(), (
        f"{path.relative_to(PKG_DIR.parent)} has {n} lines (> {MAX_LINES}); split it or say why at its top "
        f"('{LONG_FILE_MARKER} ...' in the module docstring)"
    )


def test_reference_classes_are_front_ends():
    import geneformer.compat as compat

    for name in compat.__all__:
        assert getattr(geneformer, name) is getattr(compat, name)
        assert getattr(compat, name).__module__.startswith("geneformer.compat")
