"""
A Python process that imports torch and the libraries the scripts use once, then runs each script
asked of it in a child forked from itself: `python script.py args` (or `python -m module args`, as
torchrun's agent is started) as a user runs it (its own cwd, environment, argv, sys.path, the
caller's stdin, stdout and stderr, its exit handlers at the end, its exit status), without paying
the interpreter's start and torch's import again. Libraries read some variables once, at import (huggingface_hub's
HF_HOME and HF_HUB_OFFLINE, tqdm's TQDM_*): a request whose environment differs from the server's
in any variable but those read at run time (AT_RUN_TIME) gets a fresh interpreter instead, exec'd
in the child. The tests ask through start() below; torchrun's workers through tests/forkclient.py.
Requests come on a Unix socket, any number at once: a JSON request {cwd, env, argv} with the three
file descriptors; the answer is the child's pid, then its exit status.
$ python tests/forkserver.py SOCKET_PATH
"""
import atexit
import json
import os
import re
import runpy
import select
import signal
import socket
import struct
import sys

# variables nothing reads at import: ours (the repository's modules are imported afresh by each child), and
# those torchrun sets for its workers, read when the process group starts (OMP_NUM_THREADS: see run_script)
AT_RUN_TIME = re.compile(r'FORKSERVER|NANOGPT_\w+|TORCHELASTIC_\w+|(LOCAL_|GROUP_|ROLE_)?(RANK|WORLD_SIZE)|ROLE_NAME'
                         r'|MASTER_(ADDR|PORT)|(TORCH_)?NCCL_ASYNC_ERROR_HANDLING|OMP_NUM_THREADS')
SERVER_ENV = dict(os.environ)  # as the libraries below saw it when they were imported
exit_code = 0  # the script's, for exit_at_last


def exit_at_last():
    """
    Registered by the server before it imports anything else, so in a script's process it runs after
    every exit handler the script and its libraries registered: the process then ends as the script
    did, without tearing down the heap it shares with the server, which touches (and copies) every page.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)


def forkable(env):
    """Whether a child forked from this server sees what a fresh interpreter with env would."""
    return all(AT_RUN_TIME.fullmatch(k) for k in set(env) | set(SERVER_ENV) if env.get(k) != SERVER_ENV.get(k))


def send(conn, request, fds):
    """A request and its stdin, stdout and stderr, from the asking side."""
    payload = json.dumps(request).encode()
    socket.send_fds(conn, [struct.pack('!I', len(payload)) + payload], fds)


def start(path, request, fds):
    """Ask the server at path to run request with fds: (connection, pid)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(path)
    send(conn, request, fds)
    return conn, int(readline(conn))


def readline(conn):
    line = b''
    while not line.endswith(b'\n'):
        chunk = conn.recv(1)
        if not chunk:
            raise ConnectionError("the fork server closed the connection")
        line += chunk
    return line.decode()


def run_script(request):
    """In the forked child: become `python argv...` in cwd with env, run it, and exit as it would."""
    global exit_code
    os.chdir(request['cwd'])
    if not forkable(request['env']):  # a fresh interpreter, imports and all
        os.execve(sys.executable, [sys.executable, *request['argv']], request['env'])
    os.environ.clear()
    os.environ.update(request['env'])
    if 'OMP_NUM_THREADS' in os.environ:  # read when torch loads, so set here as a new process would have it
        import torch  # (torchrun sets 1 for each of several workers)
        torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))
    argv, module = list(request['argv']), None
    if argv[0] == '-m':
        module, argv = argv[1], argv[2:]
    sys.argv = argv if module is None else [module, *argv]
    # as `python script.py` puts it, and `python -m` (the working directory)
    sys.path[0] = os.getcwd() if module else os.path.dirname(os.path.abspath(argv[0]))
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
    except BaseException as e:
        tb = e.__traceback__  # from the script's own frames on, as the interpreter reports it
        while tb is not None and (tb.tb_frame.f_code.co_filename == __file__
                                  or 'runpy' in tb.tb_frame.f_code.co_filename):
            tb = tb.tb_next
        sys.excepthook(type(e), e, tb)  # (a script may have set its own hook)
        code = 1
    exit_code = code
    raise SystemExit(code)  # out through the server's frames: the interpreter exits as the script's would


def supervise(conn):
    """One request: fork the script's process, answer its pid, wait for it, answer its status."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # waitpid, and the script's own subprocesses
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    msg, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    (size,), payload = struct.unpack('!I', msg[:4]), msg[4:]
    while len(payload) < size:
        payload += conn.recv(size - len(payload))
    request = json.loads(payload)
    pid = os.fork()
    if pid == 0:
        conn.close()
        for fd, received in zip((0, 1, 2), fds):
            os.dup2(received, fd)
            os.close(received)
        run_script(request)
    for received in fds:
        os.close(received)
    conn.sendall(f"{pid}\n".encode())
    while True:  # the asking side gone (killed) takes the script with it, as a killed parent's pipe would
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if select.select([conn], [], [], 0.02)[0] and not conn.recv(1):
            os.kill(pid, signal.SIGKILL)
    try:
        conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
    except OSError:
        pass
    os._exit(0)


def main(path):
    atexit.register(exit_at_last)
    import warnings
    import numpy  # noqa: F401
    import torch  # noqa: F401
    with warnings.catch_warnings():  # (torch 2.13's Inductor imports a deprecated torch.jit API)
        warnings.simplefilter('ignore', DeprecationWarning)
        import torch._inductor.compile_fx  # noqa: F401  (int8 decoding's kernels)
    import torch.distributed  # noqa: F401
    import torch.distributed.launcher.api  # noqa: F401  (torchrun's, which it runs as __main__)
    import torch.nn.parallel  # noqa: F401
    import tqdm  # noqa: F401
    import peft  # noqa: F401  (LoRA runs'; it imports transformers)
    # the repository's modules are the scripts' own, each imported fresh by a child from its cwd
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert not ({f[:-3] for f in os.listdir(repo) if f.endswith('.py')} | {'nanogpt'}) & set(sys.modules)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the supervisors are reaped by the kernel
    server.settimeout(1)
    parent = os.getppid()
    print('ready', flush=True)
    while True:
        try:
            conn, _ = server.accept()
        except socket.timeout:
            if os.getppid() != parent:  # the test session is gone, killed: so is its server
                return
            continue
        conn.setblocking(True)
        if os.fork() == 0:
            server.close()
            supervise(conn)
        conn.close()


if __name__ == '__main__':
    main(sys.argv[1])
