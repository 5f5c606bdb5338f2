"""
A run's out_dir: one run at a time (the lock), Ctrl-C that ends the run with one line and never
midway through a save.
"""
import atexit
import os
import signal
import sys
from contextlib import contextmanager

from nanogpt.util import UsageError, write_error


def lock_out_dir(out_dir):
    """
    Make out_dir if need be and hold out_dir/lock for the life of this process, or exit with one
    line (out_dir cannot be written, or the run that holds it): two runs writing the same
    checkpoints would destroy each other's. The lock is the kernel's (flock), so a run killed with
    kill -9 leaves a file but no lock, and the next run simply takes it. Where there is no flock
    (Windows), runs are not locked. Returns the function that releases the lock (atexit calls it
    too), for a process that ends without atexit (distributed.end_ddp).
    """
    try:
        os.makedirs(out_dir, exist_ok=True)
        if not os.access(out_dir, os.W_OK):
            raise PermissionError(out_dir)
    except OSError as e:
        raise UsageError(f"cannot write to out_dir '{out_dir}': {e}")
    try:
        import fcntl  # POSIX only
    except ImportError:
        return None
    path = os.path.join(out_dir, 'lock')
    while True:
        f = open(path, 'a+')
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or 'unknown'
            raise UsageError(f"{out_dir} is in use by another training run (PID {holder}); wait for it, stop it, or "
                             f"choose another --out_dir")
        try:  # the file may have been removed by the run that held it just before: lock the current one
            if os.fstat(f.fileno()).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        f.close()
    try:  # unbuffered, so that a full disk fails here, once
        os.ftruncate(f.fileno(), 0)
        os.write(f.fileno(), f"{os.getpid()}\n".encode())
    except OSError as e:
        os.remove(path)
        f.close()
        raise UsageError(write_error(path, e))

    def release():
        if not f.closed:
            os.remove(path)  # before the lock goes, so a waiting run never locks a removed file
            f.close()
    atexit.register(release)
    return release


class ExitOnInterrupt:
    """
    From its making on, Ctrl-C (SIGINT) ends the script with one line on stderr, 'interrupted ' +
    where() (nothing where where is None: the other DDP ranks), and exit status 130, instead of a
    KeyboardInterrupt traceback. Inside `with interrupts.deferred():` (a checkpoint being written) it
    takes effect once the block is complete: stopping a torch.save midway leaves its writer in a
    state that fails again on the way out.
    """

    def __init__(self, where=None):
        self.where, self.deferring, self.pending = where, False, False
        signal.signal(signal.SIGINT, self._handler)

    def _handler(self, signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C while stopping changes nothing
        if self.deferring:
            self.pending = True
        else:
            self._stop()

    def _stop(self):
        if self.where is not None:
            print(f"\ninterrupted {self.where()}", file=sys.stderr, flush=True)
        raise SystemExit(130)

    @contextmanager
    def deferred(self):
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
        if self.pending:
            self._stop()
