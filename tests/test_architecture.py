"""The package's shape, read from the source (AST), never by importing it.

- No import cycle among gpumlp's modules, counting every import: at the top, inside functions (lazy)
  and under ``if TYPE_CHECKING:``; ``from gpumlp.pkg import name`` counts as an import of the module
  ``gpumlp.pkg.name`` where that is a module.
- Imports point down the layers: commands (``gpumlp.cli``) → training → the core; training and
  commands → data, formats, backends. The core (model, activations, losses, optimisers, errors,
  scalars) needs only a ``Backend`` and the registry that makes one from a device name.
- Small pieces: no module over ``MAX_MODULE_LINES``, no function over ``MAX_FUNCTION_LINES``, at most
  ``MAX_ROOT_MODULES`` modules directly in gpumlp/ (the rest in subpackages named for their layer).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "gpumlp"
CORE = {f"gpumlp.{m}" for m in ("model", "activations", "losses", "optim", "errors", "scalars", "inputs", "records")}
CORE_BACKENDS = {"gpumlp.backends.base", "gpumlp.backends.registry"}  # what the core may take from the backends
EDGES = ("training", "data", "formats", "cli", "sweep")
# Layer → the layers it must not import. The core's rule on the backends is CORE_BACKENDS.
FORBIDDEN = {
    "core": {"training", "data", "formats", "cli", "sweep"},
    "backends": {"training", "cli", "formats", "data", "sweep"},
    "data": {"training", "cli", "sweep"},
    "formats": {"training", "cli", "sweep"},
    "training": {"cli", "sweep"},
    "sweep": {"cli"},
}
# (importer's layer, module) pairs allowed against FORBIDDEN: the run-state schema, which the
# checkpoint metadata checks read, imports nothing from gpumlp but errors.
EXCEPTIONS = {("formats", "gpumlp.training.state")}
MAX_MODULE_LINES, MAX_FUNCTION_LINES, MAX_ROOT_MODULES = 400, 60, 12


# ---------------------------------------------------------------- the import graph


def modules(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of ``package`` under ``root``, subpackages included: dotted name → file."""
    found = {}
    for p in sorted((root / package).rglob("*.py")):
        parts = p.relative_to(root).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return found


def imports_of(tree: ast.AST, module: str, known: set[str], is_package: bool = False) -> set[str]:
    """The modules of ``known`` that ``module`` imports anywhere in its code: at the top, inside
    functions, and under ``if TYPE_CHECKING:`` (a cycle there is one a checker or a reader meets)."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x, from ..pkg import y
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:  # from gpumlp.formats import checkpoint: the module gpumlp.formats.checkpoint
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    return (found & known) - {module}


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    mods = modules(root, package)
    return {m: imports_of(ast.parse(p.read_text()), m, set(mods), p.name == "__init__.py") for m, p in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n) :] + [n]
            if n not in state and (cycle := walk(n)):
                return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := walk(m)):
            return cycle
    return None


# ---------------------------------------------------------------- the layers


def layer(module: str) -> str | None:
    """``"core"``, a subpackage's name (``"backends"``, ``"training"``, …), or None (gpumlp itself, __main__)."""
    if module in CORE:
        return "core"
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in (*EDGES, "backends")) else None


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import against the layers, as ``"importer → imported"``."""
    bad = []
    for m, targets in sorted(graph.items()):
        mine = layer(m)
        for t in sorted(targets):
            theirs = layer(t)
            if mine == "core" and theirs == "backends" and t not in CORE_BACKENDS:
                bad.append(f"{m} → {t}")
            elif theirs in FORBIDDEN.get(mine, ()) and (mine, t) not in EXCEPTIONS:
                bad.append(f"{m} → {t}")
    return bad


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_imports_point_down_the_layers():
    bad = set(layer_violations(import_graph()))
    assert not bad, "imports against the layers: " + ", ".join(sorted(bad))


def test_the_run_state_schema_stands_alone():
    """The one exception to the layers (formats → gpumlp.training.state) stays harmless: the schema
    imports nothing from gpumlp but its errors, so the checkpoint layer pulls no training in."""
    assert import_graph()["gpumlp.training.state"] <= {"gpumlp.errors"}


def test_every_module_is_in_a_layer():
    """A new module directly in gpumlp/ is core by decision: it must be named in CORE."""
    graph = import_graph()
    assert CORE - {"gpumlp.losses"} <= set(graph)
    unplaced = {m for m in graph if layer(m) is None} - {"gpumlp", "gpumlp.__main__"}
    assert not unplaced, f"modules outside the layers: {sorted(unplaced)}"


# ---------------------------------------------------------------- the finder itself, on made-up trees


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_finder_counts_lazy_and_type_checking_imports_and_submodules(tmp_path):
    root = write_tree(tmp_path, {
        "gpumlp/__init__.py": "",
        "gpumlp/model.py": "def f():\n    from gpumlp.formats import checkpoint\n",  # lazy, a submodule
        "gpumlp/formats/__init__.py": "",
        "gpumlp/formats/checkpoint.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                        "    from gpumlp.training.state import S\n",
        "gpumlp/training/__init__.py": "",
        "gpumlp/training/state.py": "import gpumlp.model\n",
        "gpumlp/training/loop.py": "from . import state\nfrom ..formats.checkpoint import load\n",
    })  # fmt: skip
    graph = import_graph(root)
    assert graph["gpumlp.model"] == {"gpumlp.formats.checkpoint"}
    assert graph["gpumlp.formats.checkpoint"] == {"gpumlp.training.state"}
    assert graph["gpumlp.training.loop"] == {"gpumlp.training.state", "gpumlp.formats.checkpoint"}
    assert find_cycle(graph) == ["gpumlp.formats.checkpoint", "gpumlp.training.state", "gpumlp.model",
                                 "gpumlp.formats.checkpoint"]  # fmt: skip
    assert layer_violations(graph) == ["gpumlp.model → gpumlp.formats.checkpoint"]  # formats → state: allowed
    graph["gpumlp.training.state"] = set()
    assert find_cycle(graph) is None


@pytest.mark.parametrize(
    "importer,imported,allowed",
    [
        ("gpumlp.model", "gpumlp.backends.registry", True),
        ("gpumlp.model", "gpumlp.backends.cuda", False),
        ("gpumlp.optim", "gpumlp.training.config", False),
        ("gpumlp.backends.cuda", "gpumlp.training.augment", False),
        ("gpumlp.backends.cuda", "gpumlp.activations", True),
        ("gpumlp.formats.metadata", "gpumlp.training.state", True),
        ("gpumlp.formats.metadata", "gpumlp.training.loop", False),
        ("gpumlp.data.load", "gpumlp.cli.app", False),
        ("gpumlp.training.loop", "gpumlp.cli.display", False),
        ("gpumlp.cli.commands", "gpumlp.training.run", True),
        ("gpumlp.training.run", "gpumlp.formats.checkpoint", True),
        ("gpumlp.sweep.worker", "gpumlp.training.loop", True),
        ("gpumlp.sweep.run", "gpumlp.cli.display", False),
        ("gpumlp.training.run", "gpumlp.sweep.study", False),
        ("gpumlp.cli.sweep", "gpumlp.sweep.run", True),
    ],
)
def test_the_layering_rule(importer, imported, allowed):
    assert (layer_violations({importer: {imported}}) == []) == allowed


# ---------------------------------------------------------------- sizes


def source_files() -> dict[str, Path]:
    return {p.relative_to(ROOT).as_posix(): p for p in sorted((ROOT / PACKAGE).rglob("*.py"))}


def long_functions(text: str, limit: int) -> dict[str, int]:
    """Functions and methods (nested ones too) longer than ``limit`` lines, from ``def`` to their last line."""
    return {
        node.name: node.end_lineno - node.lineno + 1
        for node in ast.walk(ast.parse(text))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > limit
    }


def test_no_module_is_over_the_line_limit():
    long = {name: n for name, p in source_files().items() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_is_over_the_line_limit():
    long = {f"{name}:{f}": n for name, p in source_files().items()
            for f, n in long_functions(p.read_text(), MAX_FUNCTION_LINES).items()}  # fmt: skip
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_size_finders():
    text = "def short():\n    pass\n\n\nclass C:\n    def long(self):\n" + "        x = 1\n" * 60
    assert long_functions(text, 60) == {"long": 61}


def test_few_modules_stand_directly_in_the_package():
    root = sorted(p.name for p in (ROOT / PACKAGE).glob("*.py"))
    assert len(root) <= MAX_ROOT_MODULES, f"{len(root)} modules directly in gpumlp/: {root}"


# ---------------------------------------------------------------- variants live in their records
# A loss, an update rule, an activation or a dataset is one record (gpumlp/losses.py, gpumlp/optim.py,
# gpumlp/activations.py, gpumlp/data/datasets.py). Elsewhere the code asks the record
# (``LOSSES[model.loss].probabilities``), never compares a name or keeps a table keyed by one, so
# adding a variant touches its module alone.
RECORD_MODULES = {"gpumlp/losses.py", "gpumlp/optim.py", "gpumlp/activations.py", "gpumlp/data/datasets.py"}
REGISTRIES = {"LOSSES", "RULES", "ACTIVATIONS", "DATASETS"}  # lookups into these are how the code asks a record
NAMED_BY = {"loss", "optimizer", "activation", "dataset"}  # attributes and keys that hold a variant's name


def _name_constant(node: ast.AST, names: set[str]) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names


def _holds_a_name(node: ast.AST) -> bool:
    """``model.loss``, ``cfg.optimizer``, ``r["optimizer"]``: an expression holding a loss or rule name."""
    if isinstance(node, ast.Attribute):
        return node.attr in NAMED_BY
    return isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value in NAMED_BY


def name_tests(tree: ast.AST, names: set[str], keys: set[str]) -> list[str]:
    """Comparisons with a variant's name (``loss == "ce"``, ``x in ("mse", "ce")``), tables whose keys
    are ``keys`` (``{"adam": …}``) and lookups keyed by a name outside the registries
    (``CONFIDENCE[model.loss]``), as ``"line: code"``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            parts = [node.left, *node.comparators]
            parts += [e for p in parts if isinstance(p, (ast.Tuple, ast.List, ast.Set)) for e in p.elts]
            hit = any(_name_constant(p, names) for p in parts)
        elif isinstance(node, ast.Dict):
            hit = any(k is not None and _name_constant(k, keys) for k in node.keys)
        elif isinstance(node, ast.Subscript) and _holds_a_name(node.slice):
            base = node.value.id if isinstance(node.value, ast.Name) else getattr(node.value, "attr", "")
            hit = base not in REGISTRIES
        else:
            hit = False
        if hit:
            found.append(f"{node.lineno}: {ast.unparse(node)[:100]}")
    return found


def test_no_variant_name_is_compared_or_keyed_outside_its_record():
    from gpumlp.activations import ACTIVATIONS
    from gpumlp.data.datasets import DATASETS
    from gpumlp.losses import LOSSES
    from gpumlp.optim import HYPERPARAMS, RULES

    names = set(LOSSES) | set(RULES) | set(ACTIVATIONS) | set(DATASETS)
    keys = names - set(HYPERPARAMS)  # "momentum" is a rule and a hyper-parameter: a dict of those is fine
    found = [
        f"{path}:{hit}"
        for path, file in source_files().items()
        if path not in RECORD_MODULES
        for hit in name_tests(ast.parse(file.read_text()), names, keys)
    ]
    assert not found, "ask the loss, rule, activation or dataset record instead:\n" + "\n".join(found)


def test_the_name_finder_finds_comparisons_tables_and_keyed_lookups():
    code = (
        'a = model.loss == "ce"\nb = r["optimizer"] in ("adam", "sgd")\nc = {"adam": 1}\n'
        "d = CONFIDENCE[model.loss]\ne = LOSSES[model.loss]\nf = {'momentum': 0.9}\ng = preset(loss='ce')\n"
        'h = "images" if dataset == "mnist" else "x"\ni = TITLES[cfg.dataset]\nj = DATASETS[cfg.dataset]\n'
        'k = activation != "sigmoid"\n'
    )
    names = {"ce", "adam", "sgd", "momentum", "mnist", "sigmoid"}
    found = name_tests(ast.parse(code), names, names - {"momentum"})
    assert sorted(int(f.split(":")[0]) for f in found) == [1, 2, 3, 4, 8, 9, 11]
