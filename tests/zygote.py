"""Real processes without the interpreter's start-up: a zygote that has imported what the command imports (torch,
diffusers, transformers, ...) forks one child per command, which then runs ``python -m MODULE ARGS`` or
``python SCRIPT ARGS`` as a fresh interpreter would (its own argv, working folder, environment, standard streams,
a terminal's signal dispositions; it ends through the interpreter's normal shutdown). A forked child is a real
process: signals, exit codes, locks, what a killed run leaves behind are those of the command; only the 5-8
CPU-seconds of imports are saved.

Tests whose subject is the start-up itself (a signal while torch imports, what a bad flag imports) or another
launcher (the installed wheel's entry point, ``accelerate launch``, a mount namespace) keep plain subprocesses.
The zygote refuses a request whose environment differs from its own in a variable that libraries read when they
are imported (``HF_*``, ``OMP_*``, ``TORCH*``, ``PYTHONHASHSEED``, ...): that command gets a plain subprocess.
``PYTHONPATH`` is honoured: the child builds ``sys.path`` from it as ``python`` would.

    proc = zygote.popen([sys.executable, "-m", "tokentrim_cli", "generate", ...], stdout=PIPE, env=ENV)
    done = zygote.run([sys.executable, "-m", "tokentrim_cli", ...], capture_output=True, text=True, env=ENV)

``proc`` is a :class:`subprocess.Popen` (pipes, ``communicate``, ``send_signal``, ``wait(timeout)``,
``returncode`` negative for a signal); the zygote reaps the child and reports its status.

One zygote serves a whole pytest run (both xdist workers): the first request starts it (under a file lock), at
the path ``conftest.py`` puts in ``TOKENTRIM_TEST_ZYGOTE``; it serves on a Unix socket (SOCK_SEQPACKET: one
message per request, the child's three standard streams passed as file descriptors) and exits when the pytest
process that owns the path does.
"""

from __future__ import annotations

import fcntl
import gc
import json
import os
import runpy
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# read by libraries when they are imported (the zygote imported them once, with its own environment)
IMPORT_TIME = ("PYTHONHASHSEED", "PYTHONIOENCODING", "PYTHONUTF8", "PYTHONWARNINGS", "PYTHONDONTWRITEBYTECODE",
               "PYTHONSTARTUP", "PYTHONOPTIMIZE", "HF_", "HUGGINGFACE", "TRANSFORMERS", "DIFFUSERS", "TORCH",
               "PYTORCH", "CUDA", "OMP_", "MKL_", "KMP_", "LD_", "NUMEXPR", "OPENBLAS", "ACCELERATE", "TOKENIZERS")
# set by torch itself once it compiles (the parent test compiled something), read when compiling, not on import
READ_LATER = {"TORCHINDUCTOR_CACHE_DIR"}
# modules whose imports the zygote keeps (the tokentrim_cli modules themselves are imported again by each child)
PRELOAD = ("tokentrim_cli.cli", "tokentrim_cli.config.loading", "tokentrim_cli.run.job", "tokentrim_cli.batch.run",
           "tokentrim_cli.live.server", "accelerate", "imageio_ffmpeg", "imageio.v3")
MAX_MESSAGE = 1 << 20
UNSUPPORTED = ("preexec_fn", "start_new_session", "process_group", "shell", "pass_fds", "executable", "user",
               "group", "extra_groups", "umask")


class Refused(Exception):
    """The zygote cannot run this command as a fresh interpreter would (its import-time environment differs)."""


# ---------------------------------------------------------------------------------------------- the zygote
def _preload() -> None:
    """Import what the command imports, then forget tokentrim_cli's own modules (children import them afresh)."""
    for name in PRELOAD:
        __import__(name)
    for name in [m for m in sys.modules if m == "tokentrim_cli" or m.startswith("tokentrim_cli.")]:
        del sys.modules[name]
    gc.collect()
    gc.freeze()  # the children's garbage collections leave the preloaded objects alone (and their pages shared)


def _differs(env: dict, base: dict, imported: dict) -> list[str]:
    """The import-time variables in which a child's environment (``env`` and what the imports set, ``imported``)
    would differ from the zygote's (``base``, its environment at its start, and ``imported``)."""
    child, zygote = {**imported, **env}, {**base, **imported}
    keys = {k for k in {*child, *zygote} if k.startswith(IMPORT_TIME) and k not in READ_LATER}
    return sorted(k for k in keys if child.get(k) != zygote.get(k))


def _sys_path(first: str, pythonpath: str, site: list[str]) -> list[str]:
    """``sys.path`` as a fresh interpreter builds it: the script's folder (or the working folder for ``-m``),
    ``PYTHONPATH``'s entries, then the standard library and site-packages (``site``)."""
    return [first, *[p for p in pythonpath.split(os.pathsep) if p], *site]


def _child(request: dict, fds: list[int], sockets: list[socket.socket], imported: dict, site: list[str]) -> None:
    """In the forked child: become ``python ARGV`` and run it; never returns (SystemExit goes up to the top)."""
    for s in sockets:
        s.close()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    os.chdir(request["cwd"])
    os.sched_setaffinity(0, request["cpus"])  # a child inherits its parent's CPUs
    os.environ.clear()
    os.environ.update({**imported, **request["env"]})  # what the imports set (a fresh process's would too)
    argv = request["argv"]
    pythonpath = request["env"].get("PYTHONPATH", "")
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        sys.path[:] = _sys_path(os.getcwd(), pythonpath, site)
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        sys.path[:] = _sys_path(str(Path(argv[0]).resolve().parent), pythonpath, site)
        runpy.run_path(argv[0], run_name="__main__")
    sys.exit(0)


def serve(path: str, owner: int) -> None:
    """The zygote's loop: accept a request, fork its child, send its pid and, once reaped, its exit code."""
    base = dict(os.environ)
    own = {os.path.abspath(p) for p in base.get("PYTHONPATH", "").split(os.pathsep) if p}
    site = [p for p in sys.path[1:] if os.path.abspath(p) not in own]  # the standard library and site-packages
    sys.path.insert(1, str(ROOT))  # this checkout's package, to preload what it imports
    _preload()
    imported = {k: v for k, v in os.environ.items() if k not in base}
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # children start with a terminal's dispositions
        signal.signal(s, signal.default_int_handler if s == signal.SIGINT else signal.SIG_DFL)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    print("ready", flush=True)
    children: dict[int, socket.socket] = {}
    checked = time.monotonic()
    while True:
        if time.monotonic() - checked > 1:  # the pytest run that owns this zygote is over
            checked = time.monotonic()
            try:
                os.kill(owner, 0)
            except ProcessLookupError:
                break
        if select.select([listener], [], [], 0.02)[0]:
            conn, _ = listener.accept()
            msg, fds, _, _ = socket.recv_fds(conn, MAX_MESSAGE, 3)
            if not msg:  # a client checking that the zygote is up
                conn.close()
                continue
            request = json.loads(msg)
            if differs := _differs(request["env"], base, imported):
                conn.send(("refused: " + " ".join(differs)).encode())
                conn.close()
            else:
                pid = os.fork()
                if pid == 0:
                    _child(request, fds, [listener, conn, *children.values()], imported, site)
                conn.send(str(pid).encode())
                children[pid] = conn
            for fd in fds:
                os.close(fd)
        while children and (reaped := os.waitpid(-1, os.WNOHANG))[0]:
            conn = children.pop(reaped[0])
            conn.send(str(os.waitstatus_to_exitcode(reaped[1])).encode())
            conn.close()
    listener.close()
    Path(path).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- the client
def socket_path() -> str:
    """Where the run's zygote listens: ``conftest.py`` names it for the whole run (``pytest_configure``)."""
    if "TOKENTRIM_TEST_ZYGOTE" not in os.environ:
        os.environ["TOKENTRIM_TEST_ZYGOTE"] = os.path.join(tempfile.mkdtemp(prefix="tokentrim-zygote-"), "socket")
    return os.environ["TOKENTRIM_TEST_ZYGOTE"]


def _listening(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def ensure_started() -> str:
    """Start the run's zygote unless it is up (once for all workers: a file lock); its socket path."""
    path = socket_path()
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _listening(path):
            return path
        Path(path).unlink(missing_ok=True)
        owner = os.environ.get("TOKENTRIM_TEST_ZYGOTE_OWNER", str(os.getpid()))
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        with open(path + ".log", "w") as log:
            proc = subprocess.Popen([sys.executable, __file__, path, owner], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=log, env=env, cwd=ROOT, start_new_session=True)
        if proc.stdout.readline() != b"ready\n":
            raise RuntimeError(f"the test zygote did not start (exit {proc.wait()}): "
                               f"{Path(path + '.log').read_text()[-2000:]}")
        proc.stdout.close()
    return path


class ZygoteProcess(subprocess.Popen):
    """A Popen whose child the zygote forks (``_execute_child``) and reaps (``_internal_poll``/``_wait``)."""

    _conn: socket.socket | None = None

    def _execute_child(self, args, executable, preexec_fn, close_fds, pass_fds, cwd, env, startupinfo,
                       creationflags, shell, p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite, *rest):
        devnull = os.open(os.devnull, os.O_RDONLY)
        fds = [p2cread if p2cread != -1 else devnull, c2pwrite if c2pwrite != -1 else 1,
               errwrite if errwrite != -1 else 2]
        request = {"argv": [os.fspath(a) for a in args[1:]], "cwd": os.fspath(cwd or os.getcwd()),
                   "cpus": sorted(os.sched_getaffinity(0)),
                   "env": {os.fsdecode(k): os.fsdecode(v) for k, v in (env or os.environ).items()}}
        try:
            self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self._conn.connect(ensure_started())
            socket.send_fds(self._conn, [json.dumps(request).encode()], fds)
            reply = self._conn.recv(4096).decode()
            if not reply.isdigit():
                self._conn.close()
                raise Refused(reply)
            self.pid = int(reply)
        finally:
            os.close(devnull)
            self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)

    def _exit_code(self, timeout: float | None) -> None:
        self._conn.settimeout(timeout)
        reply = self._conn.recv(64)
        self.returncode = int(reply) if reply else -signal.SIGKILL  # no reply: the zygote went with its run
        self._conn.close()

    def _internal_poll(self, *_args, **_kw):
        if self.returncode is None and self._conn is not None:
            try:
                self._exit_code(0)
            except (BlockingIOError, TimeoutError):
                pass
        return self.returncode

    def _wait(self, timeout):
        if self.returncode is None:
            try:
                self._exit_code(timeout)
            except TimeoutError:
                raise subprocess.TimeoutExpired(self.args, timeout) from None
        return self.returncode


def popen(args: list, **kw) -> subprocess.Popen:
    """``subprocess.Popen(args, **kw)``, forked from the zygote when it can run the command as ``python`` would:
    ``[sys.executable, "-m", MODULE, ...]`` or ``[sys.executable, SCRIPT, ...]``, none of :data:`UNSUPPORTED`."""
    args = [os.fspath(a) for a in args]
    if len(args) < 2 or args[0] != sys.executable or args[1].startswith("-") and args[1] != "-m" or \
            any(kw.get(k) for k in UNSUPPORTED):
        return subprocess.Popen(args, **kw)
    try:
        return ZygoteProcess(args, **kw)
    except Refused as exc:  # shown in pytest's warnings summary: a test that pays the start-up again
        warnings.warn(f"tests/zygote.py: {' '.join(args[1:3])} runs in a plain subprocess ({exc})", stacklevel=2)
        return subprocess.Popen(args, **kw)


def run(args: list, *, timeout: float | None = None, capture_output: bool = False, input=None,
        check: bool = False, **kw) -> subprocess.CompletedProcess:
    """``subprocess.run``, through :func:`popen`."""
    if capture_output:
        kw.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if input is not None:
        kw["stdin"] = subprocess.PIPE
    with popen(args, **kw) as proc:
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if check:
        done.check_returncode()
    return done


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
