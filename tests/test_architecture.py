"""The package's internal import graph: no cycle between subpackages, and the library kept apart from the CLI.

The graph is built from the source with ``ast`` (every ``import``/``from ... import`` in a module, including the
lazy ones inside functions: a lazy import is still a dependency, it only hides the cycle until run time). Nodes
are the top-level units of ``multispike``: each subpackage (``neurons``, ``kernels``, ...), each root module
(the deprecated shims ``workflows``/``demo_rows``, the private ``_dispatch``/``_validate``/``_errors``) and the root
``__init__`` (``multispike``). The map of layers is docs/architecture.md.

Show it by hand: ``python -m pytest -q tests/test_architecture.py`` (a failure lists the cycle and the import lines).
"""
from __future__ import annotations

import ast
import os
import pathlib
import re
import subprocess
import sys

import pytest

PKG = pathlib.Path(__file__).resolve().parents[1] / "multispike"

# Edges allowed to close a cycle, each with the reason it is still there. Keep this list short and explained.
ALLOWED_CYCLE_EDGES: dict[tuple[str, str], str] = {}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "multispike"


def _module_name(path: pathlib.Path) -> tuple[str, list[str]]:
    rel = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if rel[-1] == "__init__":
        rel = rel[:-1]
        package = rel
    else:
        package = rel[:-1]
    return ".".join(rel), package


def _is_module(dotted: str) -> bool:
    rel = pathlib.Path(*dotted.split("."))
    return (PKG.parent / rel).with_suffix(".py").is_file() or (PKG.parent / rel / "__init__.py").is_file()


def import_graph() -> dict[tuple[str, str], list[str]]:
    """``{(unit_a, unit_b): ["module:line -> target", ...]}`` for every import from unit a into unit b != a."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted(PKG.rglob("*.py")):
        module, package = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1])
                    source = f"{base}.{node.module}" if node.module else base
                else:
                    source = node.module or ""
                # ``from pkg import name`` depends on the submodule pkg.name when there is one, else on pkg.
                targets = [f"{source}.{a.name}" if _is_module(f"{source}.{a.name}") else source for a in node.names]
            for target in targets:
                if target != "multispike" and not target.startswith("multispike."):
                    continue
                a, b = _unit(module), _unit(target)
                if a != b:
                    edges.setdefault((a, b), []).append(f"{module}:{node.lineno} -> {target}")
    return edges


def _cycles(edges) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
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


def test_graph_builder_sees_known_edges():
    # Guard against a builder that silently finds nothing: these dependencies exist by design.
    edges = import_graph()
    for edge in [("kernels", "neurons"), ("kernels", "_dispatch"), ("neurons", "_dispatch"), ("data", "_validate"),
                 ("export", "multispike"), ("cli", "train"), ("workflows", "cli")]:
        assert edge in edges, edge


def test_no_import_cycle_between_subpackages():
    edges = {e: lines for e, lines in import_graph().items() if e not in ALLOWED_CYCLE_EDGES}
    cycles = _cycles(edges)
    detail = "\n".join(f"  {a} -> {b}: {lines}" for comp in cycles for (a, b), lines in sorted(edges.items())
                       if a in comp and b in comp)
    assert not cycles, f"import cycles between subpackages: {cycles}\n{detail}"


def test_cycle_detector_finds_a_cycle():
    assert _cycles({("a", "b"): [], ("b", "c"): [], ("c", "a"): [], ("c", "d"): []}) == [["a", "b", "c"]]


@pytest.mark.parametrize("lower, upper", [
    ("neurons", "kernels"), ("neurons", "interop"), ("data", "neurons"),
    ("_dispatch", "neurons"), ("_dispatch", "kernels"), ("_validate", "neurons"), ("_validate", "data"),
])
def test_layering(lower, upper):
    edges = import_graph()
    assert (lower, upper) not in edges, edges.get((lower, upper))


def test_moved_names_are_the_same_objects():
    import multispike._dispatch as dispatch
    import multispike._validate as validate
    import multispike.interop.spikingjelly as sj
    import multispike.kernels as kernels
    import multispike.kernels.registry as registry
    import multispike.neurons.base as base
    import multispike.neurons.surrogate as surrogate

    for name in ("register_kernel", "get_kernel", "available_backends", "resolve_backend", "AUTO_PREFERENCE"):
        assert getattr(registry, name) is getattr(dispatch, name)
    for name in ("register_kernel", "get_kernel", "available_backends", "resolve_backend"):
        assert getattr(kernels, name) is getattr(dispatch, name)
    assert base.check_positive_int is validate.check_positive_int
    assert sj.convert_surrogate is surrogate.convert_spikingjelly_surrogate


def test_kernels_load_on_first_lookup_from_neurons_alone():
    # Importing the neurons no longer imports the kernels; the dispatcher imports its providers on the first
    # lookup, so backend="auto" still reaches the fused CPU kernels when the user never imports
    # multispike.kernels. Run in a fresh interpreter: this process has imported everything already.
    code = ("import sys, torch\n"
            "import multispike.neurons as n\n"
            "assert 'multispike.kernels' not in sys.modules\n"
            "from multispike._dispatch import available_backends, resolve_backend\n"
            "print(sorted(available_backends('lif', 'cpu')), resolve_backend('lif', 'auto', 'cpu'))\n")
    env = dict(os.environ, PYTHONPATH=str(PKG.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("MULTISPIKE_AUTO_BACKEND", None)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["['cpp',", "'torch']", "cpp"]


def test_broken_provider_is_an_error_not_a_silent_fallback(monkeypatch):
    import multispike._dispatch as dispatch

    monkeypatch.setattr(dispatch, "KERNEL_PROVIDERS", ("multispike._no_such_provider",))
    monkeypatch.setattr(dispatch, "_providers_loaded", False)
    monkeypatch.delenv("MULTISPIKE_AUTO_BACKEND", raising=False)
    with pytest.raises(ModuleNotFoundError, match="_no_such_provider"):
        dispatch.resolve_backend("lif", "auto", "cpu")
    assert dispatch._providers_loaded is False  # a later lookup retries rather than pretending it loaded


# ---------------------------------------------------------------------------------------------------------------
# No "sibling module absent" guards: an ImportError from one of multispike's own modules is a bug to surface, not
# a reason to change behaviour silently. Guards stay only around optional third-party packages.
# ---------------------------------------------------------------------------------------------------------------
_IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError"}


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(n, ast.Name) and n.id in _IMPORT_ERRORS | {"Exception", "BaseException"} for n in names)


def own_module_import_guards() -> list[str]:
    found = []
    for path in sorted(PKG.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Try) or not any(_catches_import_error(h) for h in node.handlers):
                continue
            for stmt in node.body:
                for sub in ast.walk(stmt):
                    own = (isinstance(sub, ast.ImportFrom) and (sub.level > 0 or (sub.module or "").startswith(
                        "multispike"))) or (isinstance(sub, ast.Import) and any(
                            a.name.startswith("multispike") for a in sub.names))
                    if own:
                        found.append(f"{path.relative_to(PKG.parent)}:{sub.lineno}")
    return found


# The one allowed guard: the Triton kernel module imports triton itself, and on a machine where triton is absent
# or has no usable backend, import failures are that third-party condition; it warns (RuntimeWarning) and the
# reference runs. Not silent, and only reachable on CUDA or under TRITON_INTERPRET=1.
ALLOWED_GUARDS = {"multispike/kernels/triton_kernels.py"}


def test_no_guard_around_own_module_imports():
    found = [g for g in own_module_import_guards() if g.rsplit(":", 1)[0] not in ALLOWED_GUARDS]
    assert found == [], f"imports of multispike's own modules inside try/except ImportError: {found}"


def test_guard_scanner_detects_a_guard(tmp_path, monkeypatch):
    pkg = tmp_path / "multispike"
    pkg.mkdir()
    (pkg / "mod.py").write_text("try:\n    from .other import x\nexcept ImportError:\n    x = None\n"
                                "try:\n    import numpy\nexcept ImportError:\n    numpy = None\n")
    monkeypatch.setattr(sys.modules[__name__], "PKG", pkg)
    assert own_module_import_guards() == ["multispike/mod.py:2"]


def test_formerly_guarded_modules_use_their_siblings():
    # These five modules used to fall back silently when a sibling failed to import; they now import it
    # unconditionally and use it.
    from multispike.convert.converter import MergedTimeNeuron, TimeMergedSNN
    from multispike.convert.lmht import ExpandTime, reparameterize_lmht
    from multispike.convert.mixed_timestep import AlignedNeuron
    from multispike.data.catalog import DATASETS, list_datasets
    from multispike.export import _trace, nir
    from multispike.metrics import count_ops, diet_energy, opcount
    from multispike.models.base import TimeSharedDropout
    import multispike.data.events  # noqa: F401  (registers its datasets on import)
    import multispike.demo.rows as demo_rows

    assert set(_trace._wrapper_types()) == {MergedTimeNeuron, AlignedNeuron}
    assert _trace._expand_type() == (ExpandTime,) and _trace._merged_graph_types() == (TimeMergedSNN,)
    assert nir.reparameterize_lmht is reparameterize_lmht
    assert TimeSharedDropout in opcount._dropout_types()
    assert demo_rows.count_ops is count_ops and demo_rows.diet_energy is diet_energy
    list_datasets()
    assert DATASETS["nmnist"].provided_by == "multispike.data.events"


def test_spikingjelly_surrogate_translation_moved_with_the_surrogates():
    # convert_surrogate now lives in neurons.surrogate (re-exported by interop.spikingjelly); it inspects only
    # the type's module and name, so this runs without SpikingJelly installed.
    from multispike.neurons import IFNode
    from multispike.neurons.surrogate import ATan, Sigmoid, convert_spikingjelly_surrogate

    def fake(name, **attrs):
        return type(name, (), {"__module__": "spikingjelly.activation_based.surrogate", **attrs})()

    sig = convert_spikingjelly_surrogate(fake("Sigmoid", alpha=4.0, spiking=True))
    assert isinstance(sig, Sigmoid) and sig.alpha == 4.0
    assert isinstance(convert_spikingjelly_surrogate(fake("ATan", alpha=2.0, spiking=True)), ATan)
    with pytest.raises(TypeError, match="cannot translate surrogate"):
        convert_spikingjelly_surrogate(fake("PiecewiseQuadratic", alpha=1.0))
    with pytest.raises(TypeError, match="spiking=False"):
        convert_spikingjelly_surrogate(fake("Sigmoid", alpha=4.0, spiking=False))
    node = IFNode(surrogate_function=fake("ATan", alpha=3.0, spiking=True))
    assert isinstance(node.surrogate_function, ATan) and node.surrogate_function.alpha == 3.0


# ---------------------------------------------------------------------------------------------------------------
# Library vs application: only the command line knows its flags.
# ---------------------------------------------------------------------------------------------------------------
# Besides cli/ itself, only the program entry point and the deprecated re-export of the workflows import cli.
CLI_IMPORTERS_ALLOWED = {"workflows": "deprecated shim: multispike.workflows re-exports multispike.cli.workflows",
                         "__main__": "`python -m multispike` is the command line's entry point"}


def test_only_the_cli_imports_the_cli():
    edges = import_graph()
    importers = {a for (a, b) in edges if b == "cli"} - set(CLI_IMPORTERS_ALLOWED)
    assert not importers, {a: edges[(a, "cli")] for a in importers}


_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]+")
# Flags of other programs that library messages may quote (``pip install ... --no-deps``).
_FOREIGN_FLAGS = {"--no-deps"}
# Modules whose error texts still name flags of `multispike train`, each with why. The training application keeps
# TrainConfig's fields and the flags one-to-one, so these texts are right for the CLI but name flags to a Python
# caller; turning them into ParameterError templates (as data/, metrics/ and the workflows do) is the next step.
FLAG_TEXT_PENDING = {
    "multispike/train/config.py": "TrainConfig validation (fields = flags of `multispike train`)",
    "multispike/train/runner.py": "run_training's checks of the config (--init-from, --num-classes, --resume)",
    "multispike/train/engine.py": "trainer checks (owned by the trainer rework)",
    "multispike/train/events.py": "event-training options (--lanes, --frame-budget)",
    "multispike/train/distributed.py": "--device / --sync-bn checks",
    "multispike/train/guards.py": "divergence advice (--lr, --clip-grad, --resume)",
    "multispike/train/hybrid.py": "hybrid-hook options (--levels, --lanes)",
    "multispike/train/optim.py": "--momentum with --nesterov",
    "multispike/train/tensorboard.py": "--tensorboard without the tensorboard package",
}


def _flag_texts(path: pathlib.Path) -> list[str]:
    """Flags named in the text of ``raise`` statements and of validator calls (which build error text)."""
    found = []
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) or (isinstance(node, ast.Call) and (
                getattr(node.func, "id", None) or getattr(node.func, "attr", None)) in (
                "check_positive_int", "finite_number")):
            for sub in ast.walk(node):
                if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                    found += [f"{path.relative_to(PKG.parent)}:{sub.lineno}: {f}" for f in _FLAG.findall(sub.value)
                              if f not in _FOREIGN_FLAGS]
    return found


def test_library_errors_do_not_name_cli_flags():
    offenders = []
    for path in sorted(PKG.rglob("*.py")):
        rel = str(path.relative_to(PKG.parent))
        if rel.startswith("multispike/cli/") or rel in FLAG_TEXT_PENDING:
            continue
        offenders += _flag_texts(path)
    assert offenders == [], "library error text names CLI flags (raise a ParameterError naming the parameter):\n" \
        + "\n".join(offenders)


def test_flag_scanner_detects_a_flag(tmp_path):
    mod = tmp_path / "multispike" / "m.py"
    mod.parent.mkdir()
    mod.write_text("def f(x):\n    raise ValueError(f'--limit must be >= 1, got {x}')\n"
                   "def g():\n    raise ImportError('pip install x --no-deps')\n")
    global PKG
    old, PKG = PKG, tmp_path / "multispike"
    try:
        assert _flag_texts(mod) == ["multispike/m.py:2: --limit"]
    finally:
        PKG = old


def test_pending_flag_text_list_is_not_stale():
    for rel in FLAG_TEXT_PENDING:
        assert _flag_texts(PKG.parent / rel), f"{rel} no longer names flags: remove it from FLAG_TEXT_PENDING"


def test_parameter_errors_name_parameters_and_the_cli_renders_flags(tmp_path, capsys):
    from multispike._errors import ParameterError
    from multispike.cli.main import main
    from multispike.cli.workflows import convert_checkpoint

    with pytest.raises(ParameterError) as info:
        convert_checkpoint(tmp_path / "none", "mixed", out=tmp_path / "out", timesteps=3)
    assert str(info.value).startswith("to mixed uses each layer's learned T_l; timesteps does not apply")
    assert info.value.params == ("to", "timesteps") and "--" not in str(info.value)
    # The same error from the command line names the flags.
    assert main(["convert", "--checkpoint", str(tmp_path / "none"), "--to", "mixed", "--timesteps", "3",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "error: --to mixed uses each layer's learned T_l; --timesteps does not apply (use --to uniform " \
           "--timesteps T" in err


def test_deprecated_locations_warn_and_give_the_same_objects():
    import importlib

    import multispike.cli.workflows as wf
    import multispike.convert.recipe as recipe
    import multispike.demo.rows as rows
    import multispike.train.rebuild as rebuild

    for name in ("multispike.workflows", "multispike.demo_rows"):
        sys.modules.pop(name, None)
    with pytest.warns(DeprecationWarning, match="multispike.cli.workflows"):
        old = importlib.import_module("multispike.workflows")
    assert old.convert_checkpoint is wf.convert_checkpoint and old.qat_epoch_table is wf.qat_epoch_table
    with pytest.warns(DeprecationWarning, match="multispike.demo.rows"):
        old_rows = importlib.import_module("multispike.demo_rows")
    assert old_rows.lmht_rows is rows.lmht_rows
    with pytest.warns(DeprecationWarning, match="multispike.convert.recipe.run_step"):
        assert rebuild.run_step is recipe.run_step
    with pytest.raises(AttributeError):
        rebuild.no_such_name  # noqa: B018


def test_demo_rows_are_an_explicit_registry_of_zoo_models():
    from multispike.demo import EXTRA_ROWS, ROWS, DigitsCNN, register_row
    from multispike.models import create_model

    assert list(ROWS) == ["if", "lmht", "qac", "mlif"] and EXTRA_ROWS is ROWS
    assert isinstance(create_model("digits_cnn", neuron="if", T=2), DigitsCNN)
    with pytest.raises(ValueError, match="already registered"):
        register_row("if", lambda cfg, ctx, log: [])
