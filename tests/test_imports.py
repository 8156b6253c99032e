"""No import cycles in minitransformer, circuits, experiments and exercises: every module's
imports (module-level and inside functions, absolute and relative) are read with ast, and
the graph they make among these packages has no cycle. DESIGN.md: experiments -> circuits
-> minitransformer, nothing upward."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("minitransformer", "circuits", "experiments", "exercises")


def module_files(root=ROOT, packages=PACKAGES):
    """{dotted module name: path} of every .py file under the packages."""
    modules = {}
    for package in packages:
        for path in sorted((pathlib.Path(root) / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def imported(name, path, modules):
    """The modules of `modules` that module `name` (at `path`) imports, anywhere in it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import x` imports pkg.x when that is a module, else pkg itself
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:      # import a.b.c of a known a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root=ROOT, packages=PACKAGES):
    modules = module_files(root, packages)
    return {name: imported(name, path, modules) for name, path in modules.items()}


def find_cycle(graph):
    """One cycle of `graph` ({module: imported modules}) as [a, b, ..., a], or None."""
    state = {}                                      # 1 on the current path, 2 done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt, path + [nxt])
                if cycle:
                    return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_no_import_cycles():
    graph = import_graph()
    assert {"circuits.scores", "experiments.timeseries", "exercises.common"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_nothing_imports_upward():
    order = {"minitransformer": 0, "circuits": 1, "experiments": 2}
    upward = [(a, b) for a, targets in import_graph().items() for b in targets
              if a.split(".")[0] in order and b.split(".")[0] in order
              and order[b.split(".")[0]] > order[a.split(".")[0]]]
    assert not upward, f"imports against experiments -> circuits -> minitransformer: {upward}"


def test_a_cycle_through_a_function_level_relative_import_is_found(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import f\n")
    (package / "b.py").write_text("def f():\n    from pkg import c\n")
    (package / "c.py").write_text("import pkg.a as a\n")
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.c"}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]


def test_every_command_starts_without_an_import_warning():
    """`python -m package.module`, where the package's __init__ already imported that module,
    makes runpy warn (and run the module twice over): no command may be imported by its
    package's __init__. Found from the source: every module with a __main__ block (the exercises' run the student's code)."""
    import subprocess
    import sys
    commands = sorted(".".join(path.relative_to(ROOT).with_suffix("").parts)
                      for package in PACKAGES[:3] for path in (ROOT / package).rglob("*.py")
                      if 'if __name__ == "__main__":' in path.read_text())
    assert "circuits.patching" in commands and "minitransformer.train" in commands
    for module in commands:
        done = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", module, "--help"],
                              capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 0, f"{module}: {done.stderr.strip().splitlines()[-1:]}"
