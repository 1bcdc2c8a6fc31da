"""The package's import structure: every module imports on its own, the import graph
(read with `ast`, imports inside functions included) has no cycle, and every import
points down the layers that the README's "How it is built" lists."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "advss"

# Lower rank = lower layer; a module may import only modules of a strictly lower rank
# (or, inside one package, the package's own lower modules: see `allowed`).
LAYERS = [
    ["advss"],  # the package itself: its version only
    ["advss.graphguard", "advss.replaycheck"],  # the CUDA-graph path's guard and replay check (torch only)
    ["advss.standin"],  # the CPU stand-in for a CUDA graph
    ["advss.capture"],  # CUDA capture and its clean-up
    ["advss.protocol", "advss.classmap", "advss.step", "advss.fast"],  # base: no advss imports but protocol
    # and the graph path's modules above
    ["advss.io"],  # files, seeds, devices, provenance
    ["advss.imagefolder", "advss.models", "advss.dualbn", "advss.tables"],  # image folders, models (dual BN), table writers
    ["advss.data"],
    ["advss.pretext.base"],
    ["advss.pretext.rotation", "advss.pretext.jigsaw"],
    ["advss.pretext.selfie", "advss.pretext.rotaux"],
    ["advss.pretext.ensemble"],
    ["advss.pretext"],  # the task registry
    ["advss.attacks"],  # PGD
    ["advss.attacks.autoattack"],
    ["advss.attacks.unforeseen"],
    ["advss.corruptions", "advss.objectives", "advss.pseudolabel"],  # pseudolabel: DynACL++'s clustering
    ["advss.evaluate"],  # the per-batch attack loops, ensembles
    ["advss.train"],  # the one training loop
    ["advss.results"],  # the result-path grammar and readers
    ["advss.transfer", "advss.ensemble_eval", "advss.robustness", "advss.ablations", "advss.claims",
     "advss.cards"],  # jobs
    ["advss.report.finetuning", "advss.report.transfer", "advss.report.robustness", "advss.report.ablations",
     "advss.report.claims"],
    ["advss.report.ensembles"],
    ["advss.report"],  # the registry of tables and figures
    ["advss.cli", "advss.bench", "advss.gpucheck"],  # entry points
    ["advss.gpuquick"],  # the lease-sized GPU check: gpucheck's kinds and the benchmark's rows
    ["advss.__main__"],
]
RANK = {m: i for i, layer in enumerate(LAYERS) for m in layer}
# A module added to one of these packages without a LAYERS entry sits with the named one
# (a new pretext task with the tasks, a new table module with the builders, a new attack
# with the unforeseen attacks), so that adding one touches no list here.
PACKAGE_RANK = {"advss.pretext.": RANK["advss.pretext.rotaux"], "advss.report.": RANK["advss.report.finetuning"],
                "advss.attacks.": RANK["advss.attacks.unforeseen"]}


def rank(name: str) -> int | None:
    if name in RANK:
        return RANK[name]
    return next((r for prefix, r in PACKAGE_RANK.items() if name.startswith(prefix)), None)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """advss modules `name` imports anywhere in its source (top level or inside functions)."""
    tree = ast.parse(MODULES[name].read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from advss import data`
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            found.add("<__import__>")
    return {m for m in found if m in MODULES or m == "<__import__>"} - {name}


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_module_imports_alone():
    """One fresh interpreter; sys.modules is emptied of advss before each import, so
    each module is imported as if it were the first."""
    code = (
        "import importlib, sys\n"
        f"names = {sorted(MODULES)!r}\n"
        "failed = []\n"
        "for n in names:\n"
        "    if n == 'advss.__main__':\n"
        "        continue\n"
        "    for k in [k for k in sys.modules if k == 'advss' or k.startswith('advss.')]:\n"
        "        del sys.modules[k]\n"
        "    try:\n"
        "        importlib.import_module(n)\n"
        "    except Exception as e:\n"
        "        failed.append(f'{n}: {type(e).__name__}: {e}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stdout + out.stderr


def test_no_dynamic_imports():
    """Registries hold real references: no __import__ tricks that hide an edge from the graph."""
    assert not [m for m, deps in GRAPH.items() if "<__import__>" in deps]


def find_cycle(graph: dict) -> list | None:
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == "open":
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[n] = "done"
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_import_graph_has_no_cycle():
    graph = {m: {d for d in deps if d in MODULES} for m, deps in GRAPH.items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_every_module_has_a_layer():
    assert sorted(m for m in MODULES if rank(m) is None) == [], "add new modules to LAYERS (and to the README)"
    assert sorted(set(RANK) - set(MODULES)) == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name):
    up = sorted(d for d in GRAPH[name] if rank(d) is not None and rank(d) >= rank(name))
    assert not up, f"{name} (layer {rank(name)}) imports {[(d, rank(d)) for d in up]}"


# The modules that run models (evaluation loops, attacks, training, the robustness suites),
# and the ones that only read what those wrote (result files, checkpoints): report code and
# the card exporter. A reader takes what it shares with a runner from a lower module
# (a checkpoint loader from models, a job id from protocol), never from the runner (issue 24).
RUNNERS = {"advss.evaluate", "advss.train", "advss.transfer", "advss.ensemble_eval", "advss.robustness",
           "advss.ablations"}
READERS = sorted(m for m in MODULES if m == "advss.report" or m.startswith("advss.report.")) + ["advss.cards"]


def test_runners_exist():
    assert RUNNERS <= set(MODULES) and "advss.report.robustness" in READERS


@pytest.mark.parametrize("name", READERS)
def test_report_code_and_cards_import_no_runner(name):
    assert not sorted(GRAPH[name] & RUNNERS), f"{name} imports {sorted(GRAPH[name] & RUNNERS)}"


def readme_layers() -> list[list[str]]:
    """The modules of each layer of the README's table ("From the bottom up"), resolved to
    module names: a bare `x.py` after `pkg/y.py` in the same row is `pkg/x.py`, and a row
    with an empty layer cell belongs to the layer above."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("From the bottom up"):text.index("Within a package")]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| ") or line.startswith("| layer"):
            continue
        names, folder = [], ""
        for name in re.findall(r"`([\w/]+\.py)`", line):
            name = name.removeprefix("advss/")
            if "/" in name:
                folder = name.rsplit("/", 1)[0]
            elif folder and (PKG / folder / name).exists():
                name = f"{folder}/{name}"
            names.append(module_name(PKG / name))
        if not names:  # the |---| line
            continue
        if line.split("|")[1].strip():
            rows.append(names)
        else:  # a row with an empty layer cell continues the layer above
            rows[-1] += names
    return rows


@pytest.mark.skipif(not (ROOT / "README.md").exists(), reason="a copy of the package without its README")
def test_readme_lists_every_module_in_layer_order():
    rows = readme_layers()
    listed = [m for row in rows for m in row]
    assert sorted(set(MODULES) - set(listed)) == [], "modules missing from the README's layer table"
    assert sorted(set(listed) - set(MODULES)) == [], "the README's layer table names modules that do not exist"
    for lower, upper in zip(rows, rows[1:]):
        assert max(rank(m) for m in lower) < min(rank(m) for m in upper), (lower, upper)
