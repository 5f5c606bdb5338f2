"""
A Python process that imports torch and the libraries the scripts use once, then runs each script
asked of it in a child forked from itself: `python script.py args` (or `python -m module args`, as
torchrun's agent is started) as a user runs it (its own cwd, environment, argv, sys.path, stdin
from /dev/null, stdout and stderr to files, atexit at the end), without paying the interpreter's
start and torch's import again. One request per line on stdin, JSON {cwd, env, argv, stdout,
stderr}; it answers with the child's pid, then its exit status.
"""
import atexit
import json
import os
import runpy
import sys
import traceback

import numpy  # noqa: F401
import torch  # noqa: F401
import torch.distributed  # noqa: F401
import torch.nn.parallel  # noqa: F401
import tqdm  # noqa: F401

# the repository's modules are the scripts' own, each imported fresh by a child from its cwd
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
assert not {f[:-3] for f in os.listdir(REPO) if f.endswith('.py')} & set(sys.modules)


def child(request):
    os.chdir(request['cwd'])
    os.environ.clear()
    os.environ.update(request['env'])
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, request['stdout'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, request['stderr'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        f = os.open(path, flags, 0o644)
        os.dup2(f, fd)
        os.close(f)
    argv, module = list(request['argv']), None
    if argv[0] == '-m':
        module, argv = argv[1], argv[2:]
    sys.argv = argv if module is None else [module, *argv]
    # as `python script.py` puts it, and `python -m` (the working directory)
    sys.path[0] = os.getcwd() if module else os.path.dirname(os.path.abspath(argv[0]))
    atexit._clear()  # what this server registered is not the script's
    code = 0
    try:
        if module:
            runpy.run_module(module, run_name='__main__', alter_sys=True)
        else:
            runpy.run_path(argv[0], run_name='__main__')
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:  # sys.exit('message'), as the interpreter prints it
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main():
    answers = os.fdopen(os.dup(1), 'w', buffering=1)  # our stdout is the children's until they redirect it
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            child(request)
        print(pid, file=answers)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), file=answers)


if __name__ == '__main__':
    main()
