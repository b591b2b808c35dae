"""The import graph between the top-level units of ``multispike``, and its cycles.

Usage (from the repository root)::

    python tools/import_graph.py            # summary: edges by kind, cycles at module level and with lazy imports
    python tools/import_graph.py --edges    # also every edge with the import lines that make it

The graph is read from the source with :mod:`ast`, nothing is imported. Nodes are the top-level units of the
package: each subpackage (``neurons``, ``kernels``, ...), each root module (``_errors``, ``_validate``, the
deprecated shims ``workflows``/``demo_rows``) and the root ``__init__`` (``multispike``). Each import is one of

* ``module`` - runs when the importing module is imported (module level, class bodies, ``try`` blocks);
* ``lazy`` - inside a function body: it runs on the first call, so a cycle through it does not break import
  but is still a dependency (it only moves the cycle to run time);
* ``typing`` - under ``if TYPE_CHECKING:``; never runs, listed but left out of both graphs.

Exit status 1 when there is a cycle at module level or, with ``--strict``, when the graph with lazy imports has
one. The test ``tests/test_architecture.py`` uses these functions (and lists the lazy edges allowed to close a
cycle, currently none).
"""
from __future__ import annotations

import argparse
import ast
import pathlib
import sys
from dataclasses import dataclass
from typing import Iterable, Mapping

PKG = pathlib.Path(__file__).resolve().parents[1] / "multispike"

__all__ = ["Import", "imports", "unit_graph", "cycles", "main"]


@dataclass(frozen=True)
class Import:
    """One ``import`` statement's dependency of ``module`` (line ``line``) on ``target``."""

    module: str
    line: int
    target: str
    kind: str   # "module", "lazy" or "typing"

    def __str__(self) -> str:
        return f"{self.module}:{self.line} -> {self.target}" + ("" if self.kind == "module" else f" ({self.kind})")


def _module_name(pkg: pathlib.Path, path: pathlib.Path) -> tuple[str, list[str]]:
    rel = list(path.relative_to(pkg.parent).with_suffix("").parts)
    if rel[-1] == "__init__":
        rel = rel[:-1]
        package = rel
    else:
        package = rel[:-1]
    return ".".join(rel), package


def _is_module(pkg: pathlib.Path, dotted: str) -> bool:
    rel = pathlib.Path(*dotted.split("."))
    return (pkg.parent / rel).with_suffix(".py").is_file() or (pkg.parent / rel / "__init__.py").is_file()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, kind: str = "module"):
    """``(import node, kind)`` for every import under ``node``, with the kind of the innermost scope."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, kind
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _walk(child, "typing" if kind == "typing" else "lazy")
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield from _walk(ast.Module(body=[stmt], type_ignores=[]), "typing")
            for stmt in child.orelse:
                yield from _walk(ast.Module(body=[stmt], type_ignores=[]), kind)
        else:
            yield from _walk(child, kind)


def imports(pkg: pathlib.Path = PKG) -> list[Import]:
    """Every import of a ``multispike`` module by a module of ``pkg``, in file and line order."""
    found: list[Import] = []
    for path in sorted(pkg.rglob("*.py")):
        module, package = _module_name(pkg, path)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, kind in _walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1])
                    source = f"{base}.{node.module}" if node.module else base
                else:
                    source = node.module or ""
                # ``from pkg import name`` depends on the submodule pkg.name when there is one, else on pkg.
                targets = [f"{source}.{a.name}" if _is_module(pkg, f"{source}.{a.name}") else source
                           for a in node.names]
            root = pkg.name
            found += [Import(module, node.lineno, t, kind) for t in targets if t == root or t.startswith(root + ".")]
    return sorted(found, key=lambda i: (i.module, i.line, i.target))


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def unit_graph(found: Iterable[Import], kinds: Iterable[str] = ("module", "lazy")) -> dict[tuple[str, str], list[Import]]:
    """``{(unit_a, unit_b): [imports]}`` for the imports of the given kinds from unit a into another unit b."""
    kinds = set(kinds)
    edges: dict[tuple[str, str], list[Import]] = {}
    for imp in found:
        a, b = _unit(imp.module), _unit(imp.target)
        if a != b and imp.kind in kinds:
            edges.setdefault((a, b), []).append(imp)
    return edges


def cycles(edges: Iterable[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def describe_cycles(edges: Mapping[tuple[str, str], list[Import]]) -> str:
    """The edges inside each cycle of ``edges`` with their import lines ("" when there is none)."""
    lines = []
    for comp in cycles(edges):
        lines.append(f"cycle {' <-> '.join(comp)}:")
        lines += [f"  {a} -> {b}: " + "; ".join(map(str, imps)) for (a, b), imps in sorted(edges.items())
                  if a in comp and b in comp]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edges", action="store_true", help="print every edge with its import lines")
    parser.add_argument("--strict", action="store_true", help="exit 1 also on a cycle through lazy imports")
    args = parser.parse_args(argv)
    found = imports()
    module_level = unit_graph(found, ("module",))
    with_lazy = unit_graph(found, ("module", "lazy"))
    lazy_only = sorted(set(with_lazy) - set(module_level))
    typing_only = sorted(set(unit_graph(found, ("typing",))) - set(with_lazy))
    units = sorted({u for e in with_lazy for u in e})
    print(f"{len(units)} units, {len(found)} imports of multispike modules; edges between units: "
          f"{len(module_level)} at module level, {len(lazy_only)} only through lazy (function-level) imports, "
          f"{len(typing_only)} only under TYPE_CHECKING")
    print("lazy-only edges: " + (", ".join(f"{a}->{b}" for a, b in lazy_only) or "none"))
    bad_module, bad_lazy = cycles(module_level), cycles(with_lazy)
    print(f"cycles at module level: {bad_module or 'none'}")
    print(f"cycles with lazy imports: {bad_lazy or 'none'}")
    if bad_module or bad_lazy:
        print(describe_cycles(with_lazy))
    if args.edges:
        for (a, b), imps in sorted(with_lazy.items()):
            kind = "module" if (a, b) in module_level else "lazy"
            print(f"{a} -> {b} [{kind}]: " + "; ".join(map(str, imps)))
    return 1 if bad_module or (args.strict and bad_lazy) else 0


if __name__ == "__main__":
    sys.exit(main())
