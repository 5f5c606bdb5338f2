"""
A torchrun worker that the fork server runs: `torchrun ... tests/forkclient.py train.py args` makes
each worker `python train.py args` in a child of tests/forkserver.py (this process's cwd,
environment and stdio), passes SIGTERM and SIGINT on to it, and ends as it ended (a SIGKILL
included). Its own start costs no torch import.
"""
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from forkserver import readline, start  # noqa: E402

conn, pid = start(os.environ['FORKSERVER'], dict(cwd=os.getcwd(), env=dict(os.environ), argv=sys.argv[1:]), [0, 1, 2])
# for a test that kills this worker (conftest.worker_pid)
with open(f"{os.environ['FORKSERVER']}.{os.getpid()}", 'w') as f:
    f.write(str(pid))
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda signum, frame: os.kill(pid, signum))
code = int(readline(conn))
if code < 0:  # killed by a signal: so is this process, for torchrun to see the same
    signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
sys.exit(code)
