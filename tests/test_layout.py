"""
The repository's shape: nanoGPT's files at the top (the scripts, model.py, configurator.py) and the machinery in
the nanogpt/ package; the import graph at module level without a circle, nothing importing a script, the package
reaching up only to model.py, and no deeper than it is. Run: python -m pytest tests/test_layout.py
"""
import ast
import os

from conftest import REPO

SCRIPTS = {'train', 'sample', 'bench', 'eval', 'export', 'plot'}


def modules():
    """{name: path} of the top level's .py files and the package's modules."""
    found = {f[:-3]: os.path.join(REPO, f) for f in os.listdir(REPO) if f.endswith('.py')}
    package = os.path.join(REPO, 'nanogpt')
    found.update({f'nanogpt.{f[:-3]}': os.path.join(package, f) for f in os.listdir(package)
                  if f.endswith('.py') and f != '__init__.py'})
    return found


def imports_at_module_level(path, names):
    """The modules of names that path imports when it is imported (not from inside a function: a deferred import)."""
    found = set()

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                found.add(child.module)
                found.update(f'{child.module}.{a.name}' for a in child.names)
            visit(child)
    with open(path, encoding='utf-8') as f:
        visit(ast.parse(f.read()))
    return found & set(names)


def test_the_top_level_is_nanogpts_and_the_machinery_is_one_package():
    top = {f[:-3] for f in os.listdir(REPO) if f.endswith('.py')}
    assert top == SCRIPTS | {'model', 'configurator'}
    assert os.path.isfile(os.path.join(REPO, 'nanogpt', '__init__.py'))


def test_the_import_graph_has_no_circle_and_runs_downwards_only():
    mods = modules()
    graph = {m: imports_at_module_level(p, mods) - {m} for m, p in mods.items()}
    for m, targets in graph.items():
        assert not targets & (SCRIPTS | {'configurator'}), f"{m} imports a script: {targets}"
        if m.startswith('nanogpt.'):
            assert targets <= {'model'} | {t for t in mods if t.startswith('nanogpt.')}, (m, targets)
    assert graph['model'] == set()  # model.py reaches the package from methods only
    layer = {}

    def depth(m, path=()):
        assert m not in path, f"an import circle: {' -> '.join(path + (m,))}"
        if m not in layer:
            layer[m] = 1 + max((depth(t, path + (m,)) for t in graph[m]), default=0)
        return layer[m]
    assert max(depth(m) for m in graph) <= 6, layer  # a module above all it imports: scripts included
