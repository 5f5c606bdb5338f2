"""
The documentation's commands: every shell command in README.md and docs/*.md (```sh blocks, and
inline `python ...` / `torchrun ...`) names scripts and config files that exist and settings those
scripts have, so that a renamed setting cannot leave a dead command behind; README.md stays a
guide of at most 300 lines, and the pictures it shows exist.
Run: python -m pytest tests/test_docs.py
"""
import ast
import glob
import os
import re
import shlex

from conftest import REPO

DOCS = [os.path.join(REPO, 'README.md'), *sorted(glob.glob(os.path.join(REPO, 'docs', '*.md')))]


def commands(path):
    """(line number, command) of every shell command in a Markdown file."""
    with open(path, encoding='utf-8') as f:
        lines = f.read().splitlines()
    found, fenced = [], None
    for i, line in enumerate(lines, 1):
        if line.strip().startswith('```'):
            fenced = line.strip()[3:] if fenced is None else None
            continue
        if fenced == 'sh':
            if line.strip() and not line.strip().startswith('#'):
                found.append((i, line.strip()))
        elif fenced is None:
            found += [(i, c) for c in re.findall(r'`((?:python|torchrun) [^`]+)`', line)]
    return [(i, part.strip()) for i, c in found for part in re.split(r'&&|;|\|', c) if part.strip()]


def settings(script):
    """The names a script takes as --name=value: its settings (nanoGPT's configurator) or argparse options."""
    path = os.path.join(REPO, script)
    with open(path, encoding='utf-8') as f:
        source = f.read()
    if 'runpy.run_path' in source and script.startswith('data/'):  # a preset of the OpenWebText script
        return settings('data/openwebtext/prepare.py')
    names = set(re.findall(r"add_argument\('--(\w+)'", source))  # plot.py's
    for node in ast.parse(source).body:
        if isinstance(node, ast.Expr) and 'configurator' in ast.unparse(node):
            break
        if isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def check(command):
    """What is wrong with one command ('' if nothing)."""
    words = shlex.split(command)
    while words and re.fullmatch(r'[A-Z_]+=\S*', words[0]):  # NCCL_IB_DISABLE=1 ...
        words = words[1:]
    if not words or words[0] not in ('python', 'torchrun') or words[1:2] == ['-m']:
        return ''
    words = words[1:]
    if words[0] != words[0].lstrip('-'):  # torchrun's own options come before the script
        words = words[next(i for i, w in enumerate(words) if w.endswith('.py')):]
    script, args = words[0], words[1:]
    if not os.path.isfile(os.path.join(REPO, script)):
        return f"no script {script}"
    known = settings(script)
    for arg in args:
        if arg.startswith('--'):
            name = arg[2:].split('=')[0]
            if name not in known:
                return f"{script} has no setting {name}"
        elif arg.endswith('.py') and not os.path.isfile(os.path.join(REPO, arg)):
            return f"no config file {arg}"
    return ''


def test_every_documented_command_names_what_exists():
    checked, dead = 0, []
    for path in DOCS:
        for line, command in commands(path):
            problem = check(command)
            checked += 1
            if problem:
                dead.append(f"{os.path.relpath(path, REPO)}:{line}: {problem}: {command}")
    assert not dead, '\n'.join(dead)
    assert checked > 50  # the README's and the docs' commands were found


def test_the_check_finds_a_dead_command():
    assert check('python train.py config/train_shakespeare_char_cpu.py --max_iters=10') == ''
    assert check('torchrun --standalone --nproc_per_node=8 bench.py --mode=memory --n_layer=48') == ''
    assert check('python train.py --max_iter=10') == 'train.py has no setting max_iter'
    assert check('python sample.py config/nope.py') == 'no config file config/nope.py'
    assert check('python nope.py') == 'no script nope.py'
    assert check('python data/fineweb_edu/prepare.py --data_files=x') == ''


def test_readme_is_a_guide_and_its_pictures_exist():
    with open(os.path.join(REPO, 'README.md'), encoding='utf-8') as f:
        readme = f.read()
    assert len(readme.splitlines()) <= 300
    pictures = re.findall(r'!\[[^\]]*\]\(([^)]+)\)', readme)
    assert pictures and all(os.path.isfile(os.path.join(REPO, p)) for p in pictures), pictures
    links = re.findall(r'\]\((docs/[^)#]+)', readme)
    assert links and all(os.path.isfile(os.path.join(REPO, p)) for p in links), links
