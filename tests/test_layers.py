"""The layers, enforced: agents/ and envs/ import nothing from training/; PPO's and MuZero's modules never
import each other; the shared modules import neither; no import cycles. Imports inside functions count:
they hide a cycle, they do not remove it."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("agents", "envs", "training")

def _in(*prefixes: str) -> set[str]:
    return {m for m in _modules() if any(m == p or m.startswith(p + ".") for p in prefixes)}


# Each algorithm's modules: its packages, and the PPO math (its exploration bonus too) with the networks only PPO acts with.
PPO_PARTS = ("training.ppo", "agents.ppo", "agents.ppo_kernel", "agents.distributions", "agents.networks", "agents.sc2_networks",
             "agents.rnd")
MUZERO_PARTS = ("training.muzero", "agents.muzero")
# The one module that knows every algorithm: it loads any run's agent for the commands in launch/.
EVERY_ALGORITHM = {"training.trained_agent"}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules a file imports, anywhere in it (a package's own __init__ excepted: importing
    `training.x` runs `training/__init__.py`, which is no dependency on any module in it)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name in modules and name not in PACKAGES}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def test_agents_and_envs_import_nothing_from_training():
    wrong = {(m, d) for m, deps in _graph().items() if m.split(".")[0] in ("agents", "envs")
             for d in deps if d.startswith("training")}  # fmt: skip
    assert not wrong, sorted(wrong)


def test_ppo_and_muzero_never_import_each_other_and_shared_code_neither():
    graph = _graph()
    PPO, MUZERO = _in(*PPO_PARTS), _in(*MUZERO_PARTS)
    wrong = set()
    for module, deps in graph.items():
        if module in EVERY_ALGORITHM:
            continue
        if module in PPO:
            wrong |= {(module, d) for d in deps & MUZERO}
        elif module in MUZERO:
            wrong |= {(module, d) for d in deps & PPO}
        else:  # shared
            wrong |= {(module, d) for d in deps & (PPO | MUZERO)}
    assert not wrong, sorted(wrong)
    assert len(PPO) > 5 and len(MUZERO) > 5 and set(graph) >= EVERY_ALGORITHM, "a package listed here no longer exists"


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep] if dep in path else [module, dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


def test_the_checker_sees_imports_inside_functions(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from training.ppo.train import train\n    import training.ppo.config\n")
    assert _imports(path, _modules()) == {"training.ppo.train", "training.ppo.config"}
