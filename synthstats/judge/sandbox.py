"""OS containment for judge workers, and the parent's handle on one worker.

A worker runs `synthstats.judge.worker` with a scrubbed environment (no keys, tokens or
credentials of the parent: only what Python, PyMC and the C compiler need), in its own
session, with a private work dir that holds its PyTensor compile cache and the mount points
of its programs' scratch space, removed when it closes. Under bubblewrap it also sees a
read-only filesystem made of the system dirs, the Python installation and the package
folder only (no home dirs, no other project files), a private /tmp, no network, its own PID
namespace, and runs as a dedicated uid when the parent is root (so the process-count limit
holds and no root-owned file is readable). Without bubblewrap those last protections are
missing: the judge warns once.

The parent never opens a path inside the sandbox: the worker's replies and its stderr come
through pipes, read with caps, and its stderr is drained by a thread of its own, so nothing
a worker or its programs write can block the parent or make it read another file.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import json
import os
import pickle
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthstats.errors import UserFacingError
from synthstats.judge.score import Score

if TYPE_CHECKING:
    from synthstats.config import JudgeConfig
    from synthstats.envs.base import Env

# Beyond its program's timeout, how long a worker may take to answer before it is killed.
GRACE_S = 10.0
STARTUP_TIMEOUT_S = 300.0
_MAX_REPLY_BYTES = 1 << 20
# How much of the worker's stderr the parent keeps (the end), for error messages.
_STDERR_TAIL_BYTES = 4096
_UID_BASE = 1_000_000
_worker_numbers = itertools.count()
_warned_uncontained = False


class JudgeUnavailable(UserFacingError, RuntimeError):
    """A worker could not start: a broken installation, not a program's fault."""


class SandboxedWorker:
    """One persistent worker process inside the sandbox, scoring one program at a time.

    It starts on first use, and again after it died or hung, so a caller never handles a
    lost worker: the program that was running gets a `crashed` or `timeout` score.
    """

    def __init__(self, judge_cfg: JudgeConfig, compile_seed: Path | None = None):
        self._cfg = judge_cfg
        self._compile_seed = compile_seed
        self._process: subprocess.Popen | None = None
        self._work_dir: Path | None = None
        self._buffer = bytearray()
        self._stderr: _Tail | None = None
        # The uid programs run as, when the parent is root and bubblewrap contains them.
        self.uid: int | None = None
        # Whether each program runs in its own namespaces (confine.py), once started.
        self.confined = False
        self._killed = False

    @property
    def running(self) -> bool:
        return self._process is not None

    def score(self, source: str, env: Env) -> Score:
        """Scores a program that has passed the gate."""
        if self._process is None:
            self.start()
        cfg = self._cfg
        request = {
            "source": source,
            "data": dict(env.data),
            "observed": list(env.observed),
            "reference_elpd": env.reference_elpd,
            "budget": cfg.budget(),
            "limits": {
                "timeout_s": cfg.timeout_s,
                "memory_mb": cfg.memory_mb,
                "max_output_bytes": cfg.max_output_bytes,
                "max_file_bytes": cfg.max_file_mb << 20,
                "max_processes": cfg.max_processes,
            },
        }
        start = time.perf_counter()
        try:
            self._send(request)
            reply = self._receive(start + cfg.timeout_s + GRACE_S)
            return Score.from_dict(reply)
        except _WorkerLost as lost:
            self.close()
            return Score.failure(lost.kind, lost.message, time.perf_counter() - start)
        except (ValueError, TypeError) as error:
            self.close()
            return Score.failure("crashed", f"malformed verdict from the worker: {error}")

    def start(self) -> None:
        """Starts the worker and waits until it has imported PyMC and warmed up."""
        self.close()
        if self._killed:
            raise JudgeUnavailable("this judge worker was killed for good")
        containment = containment_for(self._cfg.sandbox)
        uid = _sandbox_uid() if containment == "bwrap" and os.geteuid() == 0 else None
        self.uid = uid
        work_dir = Path(tempfile.mkdtemp(prefix="synthstats-judge-"))
        self._work_dir = work_dir
        compile_dir = work_dir / "pytensor"
        if self._compile_seed is not None:
            shutil.copytree(self._compile_seed, compile_dir, symlinks=True)
        compile_dir.mkdir(exist_ok=True)
        (work_dir / "tmp").mkdir()
        if uid is not None:
            _chown_tree(work_dir, uid)
        argv = [sys.executable, "-s", "-P", "-m", "synthstats.judge.worker"]
        argv += ["--compile", self._cfg.compile]
        if uid is not None:
            argv += ["--uid", str(uid)]
        if containment == "bwrap":
            argv = bwrap_prefix(work_dir) + argv
        self._process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=sandbox_environment(work_dir, containment),
            cwd=work_dir,
            start_new_session=True,
        )
        self._stderr = _Tail(self._process.stderr)
        if self._killed:  # kill() ran while the process was starting
            _kill_session(self._process.pid)
        self._buffer.clear()
        try:
            hello = self._receive(time.perf_counter() + STARTUP_TIMEOUT_S)
        except _WorkerLost as lost:
            self.close()
            raise JudgeUnavailable(f"judge worker failed to start: {lost.message}") from None
        if not hello.get("ready"):
            self.close()
            raise JudgeUnavailable(f"judge worker said {hello!r} instead of ready")
        self.confined = bool(hello.get("confined"))
        if not self.confined:
            _warn_once(
                "the judge cannot give each program its own user and mount namespace "
                "(unprivileged user namespaces are off): programs share the worker's "
                "scratch and compile dirs, so one program can leave files for the next"
            )

    def kill(self) -> None:
        """Kills the worker's processes now, from any thread, for good: a program it is
        scoring ends as `crashed` and no new worker process starts. close() still cleans."""
        self._killed = True
        process = self._process
        if process is not None:
            _kill_session(process.pid)

    def close(self) -> None:
        """Kills the worker and everything it started, and removes its work dir."""
        process, self._process = self._process, None
        if process is not None:
            _kill_session(process.pid)
            process.wait()
            for stream in (process.stdin, process.stdout):
                stream.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)
            self._work_dir = None

    def log_tail(self) -> str:
        """The end of the worker's own stderr, for error messages (from the pipe, never
        from a file in the sandbox that the worker or a program could replace)."""
        if self._stderr is None:
            return ""
        text = self._stderr.text().strip()
        return f": ...{text[-800:]}" if text else ""

    def __enter__(self) -> SandboxedWorker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _send(self, request: dict[str, Any]) -> None:
        payload = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self._process.stdin.write(len(payload).to_bytes(8, "big") + payload)
            self._process.stdin.flush()
        except (BrokenPipeError, OSError):
            raise _WorkerLost("crashed", f"the worker died{self.log_tail()}") from None

    def _receive(self, deadline: float) -> dict[str, Any]:
        """One JSON line from the worker, parsed; _WorkerLost at EOF or past the deadline."""
        fd = self._process.stdout.fileno()
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    raise _WorkerLost("timeout", "the judge worker stopped answering")
                if not selector.select(timeout=remaining):
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise _WorkerLost("crashed", f"the judge worker died{self.log_tail()}")
                self._buffer += chunk
                if len(self._buffer) > _MAX_REPLY_BYTES:
                    raise _WorkerLost("crashed", "the judge worker sent an oversized reply")
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer[:] = rest
        try:
            reply = json.loads(line)
        except ValueError:
            raise _WorkerLost("crashed", "the judge worker sent a malformed reply") from None
        if not isinstance(reply, dict):
            raise _WorkerLost("crashed", "the judge worker sent a malformed reply")
        return reply


class _Tail:
    """Drains a pipe on a daemon thread until EOF, keeping only its last bytes: a worker
    that floods its stderr neither blocks on it nor fills the parent's memory."""

    def __init__(self, stream: Any):
        self._stream = stream
        self._kept: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._drain, daemon=True, name="judge-stderr")
        self._thread.start()

    def text(self) -> str:
        """What is kept so far, after waiting briefly for a dying worker's last words."""
        self._thread.join(timeout=1.0)
        with self._lock:
            return b"".join(self._kept)[-_STDERR_TAIL_BYTES:].decode(errors="replace")

    def close(self) -> None:
        self._thread.join(timeout=1.0)
        with contextlib.suppress(OSError):
            self._stream.close()

    def _drain(self) -> None:
        fd = self._stream.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            with self._lock:
                self._kept.append(chunk)
                self._size += len(chunk)
                while self._size - len(self._kept[0]) >= _STDERR_TAIL_BYTES:
                    self._size -= len(self._kept.popleft())


class _WorkerLost(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


def containment_for(sandbox: str) -> str:
    """'bwrap' or 'none' for the config's sandbox setting (auto|bwrap|none); warns once
    when programs will run without OS containment."""
    global _warned_uncontained
    if sandbox not in ("auto", "bwrap", "none"):
        raise ValueError(f"judge.sandbox must be auto, bwrap or none, got {sandbox!r}")
    if sandbox != "none" and bwrap_works():
        return "bwrap"
    if sandbox == "bwrap":
        raise JudgeUnavailable("judge.sandbox=bwrap, but bubblewrap is missing or cannot run")
    if not _warned_uncontained:
        _warned_uncontained = True
        warnings.warn(
            "the judge runs programs without bubblewrap: they keep the static gate, the "
            "resource limits, a scrubbed environment and a private temp dir, but can read "
            "your files and reach the network (install bubblewrap to contain them)",
            RuntimeWarning,
            stacklevel=2,
        )
    return "none"


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


@functools.cache
def bwrap_works() -> bool:
    """Whether bubblewrap can build the worker's sandbox on this machine."""
    if shutil.which("bwrap") is None:
        return False
    with tempfile.TemporaryDirectory() as probe:
        command = bwrap_prefix(Path(probe)) + ["true"]
        try:
            return subprocess.run(command, capture_output=True, timeout=30).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False


def bwrap_prefix(work_dir: Path) -> list[str]:
    """bwrap arguments: system dirs, the Python installation and the package folder
    read-only, nothing else of the host's files, the work dir writable, private /tmp, no
    network, own PID namespace."""
    argv = ["bwrap"]
    for top in ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    # The private /tmp comes first: a Python installation under /tmp (a venv in a checkout
    # there) is then bound on top of it instead of being hidden by it.
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for path in _python_paths():
        for parent in reversed(Path(path).parents[:-1]):  # bwrap would make them 0700
            argv += ["--perms", "0755", "--dir", str(parent)]
        argv += ["--ro-bind", path, path]
    argv += ["--bind", str(work_dir), str(work_dir), "--chdir", str(work_dir)]
    argv += ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
    argv += ["--die-with-parent", "--new-session"]
    if os.geteuid() == 0:  # the worker drops to its own uid, then has no capability left
        argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    return argv + ["--"]


def sandbox_environment(work_dir: Path, containment: str = "none") -> dict[str, str]:
    """The worker's whole environment: nothing is inherited from the parent but its
    OpenBLAS settings. A machine may pin OpenBLAS's kernel (OPENBLAS_CORETYPE): another
    kernel sums dot products in another order, NUTS amplifies the last bits, and the same
    program would score differently in a worker than in the trusted path (by 0.36 nats on
    a dugongs program)."""
    environment = {
        "PATH": os.pathsep.join(
            [str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]
        ),
        "HOME": str(work_dir),
        "TMPDIR": str(work_dir / "tmp"),
        "USER": "judge",
        "LOGNAME": "judge",
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(_package_dir().parent),
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTENSOR_FLAGS": f"base_compiledir={work_dir / 'pytensor'}",
        "MPLCONFIGDIR": str(work_dir / "tmp"),
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        # Which mounts the worker makes read-only for its programs (confine.py).
        "SYNTHSTATS_JUDGE_WORK_DIR": str(work_dir),
        "SYNTHSTATS_JUDGE_CONTAINMENT": containment,
    }
    for name, value in os.environ.items():
        if name.startswith("OPENBLAS_"):
            environment.setdefault(name, value)  # the thread count above stays 1
    return environment


def _package_dir() -> Path:
    """The synthstats package folder itself (for an editable install: <checkout>/synthstats)."""
    import synthstats

    return Path(synthstats.__file__).resolve().parent


def _python_paths() -> list[str]:
    """The Python installation and this package folder, outermost first: never the
    checkout around the package, nor other entries of the parent's import path."""
    candidates = {
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        str(Path(sys.executable).resolve().parent.parent),
        str(_package_dir()),
    }
    existing = sorted(os.path.realpath(path) for path in candidates if os.path.exists(path))
    outermost: list[str] = []
    system = ("/usr/", "/etc/", "/bin/", "/sbin/", "/lib/", "/lib64/")
    for path in existing:
        if path.startswith(system) or any(path.startswith(kept + "/") for kept in outermost):
            continue
        outermost.append(path)
    return outermost


def _sandbox_uid() -> int:
    """A uid of its own per worker: processes of one cannot signal another's."""
    return _UID_BASE + (os.getpid() % 1_000_000) * 64 + next(_worker_numbers) % 64


def _chown_tree(root: Path, uid: int) -> None:
    os.chown(root, uid, uid)
    for directory, names, files in os.walk(root):
        for name in names + files:
            os.chown(os.path.join(directory, name), uid, uid, follow_symlinks=False)


def _kill_session(session: int) -> None:
    """SIGKILLs every process in the worker's session (bwrap's namespace dies with it)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(session, signal.SIGKILL)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry), signal.SIGKILL)
