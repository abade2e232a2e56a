"""The packages form layers that import one way only.

The nodes are the top-level packages, with utils/ split in two: its own modules (utils/*.py) and
each of its subpackages, the engines. From the bottom up:

1. ``utils`` (errors, image_io, progress, output_files, host_memory): the bottom layer. It imports
   nothing of the project's and no torch (numpy, OpenCV, PIL and tqdm are fine), so every package
   and every script's ``--help`` can use it.
2. ``models`` (the network, its config, checkpoint files, devices) imports only the bottom layer;
   ``data`` (datasets, degradation, image <-> tensor) the bottom layer and ``models``; ``options``
   the bottom layer and ``models.config`` only, which loads no torch, so that the scripts answer
   ``--help`` and option errors without loading it.
3. The engines ``utils.evaluation`` (test.py's inference, metrics, tables) on layers 1-2, and
   ``utils.training``, ``utils.demo`` and any later one on layers 1-2 and ``utils.evaluation``
   (training validates with its metrics); ``utils.demo``, which shows the others' work, also on
   ``utils.photo`` (its group photo with known faces, to score enhance.py), and ``utils.web`` (the
   web page) on ``utils.photo`` too (its photo mode runs enhance.py's pipeline). ``utils/__init__.py``
   imports none of them.
4. The scripts (train.py, test.py, ...) on top: they may import anything and nothing imports them.

Imports inside functions count: they are the same dependency, only deferred.
"""
import ast
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PACKAGES = ("models", "data", "options", "utils")
ENGINES = tuple(sorted(f"utils.{p.parent.name}" for p in (ROOT / "utils").glob("*/__init__.py")))
SCRIPTS = tuple(sorted(p.stem for p in ROOT.glob("*.py")))
BELOW_ENGINES = {"utils", "models", "data", "options"}
ALLOWED = {
    "utils": set(),
    "models": {"utils"},
    "data": {"utils", "models"},
    "options": {"utils", "models"},
    "utils.evaluation": BELOW_ENGINES,
    **{engine: BELOW_ENGINES | {"utils.evaluation"} for engine in ENGINES if engine != "utils.evaluation"},
    "utils.demo": BELOW_ENGINES | {"utils.evaluation", "utils.photo"},
    "utils.web": BELOW_ENGINES | {"utils.evaluation", "utils.photo"},
}
TORCH_FREE = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "triton"))
print(loaded[:5])
"""


def module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules():
    """{module name: path} of every module of the packages."""
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def node(module):
    """The layer node of a module of the project, or None for one from elsewhere (stdlib, torch, ...)."""
    parts = module.split(".")
    if parts[0] == "utils" and len(parts) > 1 and f"utils.{parts[1]}" in ENGINES:
        return f"utils.{parts[1]}"
    if parts[0] in PACKAGES:
        return parts[0]
    return f"script:{module}" if module in SCRIPTS else None


def imported_modules(path, known):
    """The modules ``path`` imports: ``from p import name`` counts as p.name when that is a module."""
    found = set()
    for item in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(item, ast.Import):
            found.update(alias.name for alias in item.names)
        elif isinstance(item, ast.ImportFrom):
            base = item.module or ""
            if item.level:  # relative: resolved against the importing module's package
                package = module_name(path).split(".")
                package = package if path.name == "__init__.py" else package[:-1]
                base = ".".join(package[:len(package) - item.level + 1] + ([base] if base else []))
            for alias in item.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return found


def import_edges():
    """{(importing module, imported module)} between the project's modules."""
    modules = package_modules()
    known = set(modules) | set(SCRIPTS)
    return {(name, target) for name, path in modules.items() for target in imported_modules(path, known)
            if node(target) is not None}


def test_the_layers_import_only_downwards():
    wrong = sorted(f"{a} imports {b} ({node(a)} may import only {', '.join(sorted(ALLOWED[node(a)])) or 'nothing'})"
                   for a, b in import_edges() if node(a) != node(b) and node(b) not in ALLOWED[node(a)])
    assert not wrong, "\n".join(wrong)


def test_the_import_graph_of_the_nodes_has_no_cycle():
    graph = {}
    for a, b in import_edges():
        if node(a) != node(b):
            graph.setdefault(node(a), set()).add(node(b))
    done, path = set(), []

    def visit(n):
        assert n not in path, f"import cycle: {' -> '.join([*path[path.index(n):], n])}"
        if n in done:
            return
        path.append(n)
        for m in sorted(graph.get(n, ())):
            visit(m)
        path.pop()
        done.add(n)

    for n in sorted(graph):
        visit(n)
    assert {"utils", "models", "data", "options", "utils.training", "utils.evaluation"} <= set(graph) | done


def test_options_use_only_the_config_of_models_and_utils_init_no_engine():
    edges = import_edges()
    from_options = {b for a, b in edges if node(a) == "options" and node(b) == "models"}
    assert from_options == {"models.config"}
    assert not {b for a, b in edges if a == "utils" and b != "utils"}


def test_bottom_layer_options_and_config_load_no_torch():
    bottom = [m for m in package_modules() if node(m) == "utils"]
    assert {"utils.errors", "utils.image_io", "utils.progress"} <= set(bottom)
    done = subprocess.run([sys.executable, "-c", TORCH_FREE, *bottom, "models.config", "options", "data"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("script", ["train.py", "test.py", "param.py", "psnr_ssim.py"])
def test_help_loads_no_torch(script):
    # -X importtime lists every module the interpreter imports, one per line on stderr.
    done = subprocess.run([sys.executable, "-X", "importtime", script, "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "usage:" in done.stdout, done.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "utils.errors" in imported
    assert not {m for m in imported if m.split(".")[0] in ("torch", "torchvision")}
