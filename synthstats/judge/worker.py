"""The persistent judge worker: imports PyMC once, then forks two contained children per
program: phase 1 runs the program and describes its model, phase 2 (forked from this
process, where no program code ever ran) rebuilds and scores it (see runner.py).

It runs inside the sandbox that `sandbox.py` builds, non-dumpable (a program's child cannot
ptrace it or open its memory or file descriptors). Each child gets its own process group,
its own user and mount namespace (`confine.py`: a size-capped scratch tmpfs that vanishes
with it, the compile dir behind a throwaway overlay, the work dir read-only), limits on
address space, CPU seconds, file size, process count and core dumps, and /dev/null for
stdin; its stdout and stderr come back through a pipe the worker counts. At the wall-clock
timeout the worker kills the child's group and, as subreaper, every process the program
left behind.

Protocol (stdin/stdout of this process):
  parent -> worker: 8-byte big-endian length, then a pickled request (the trusted direction);
  worker -> parent: one JSON object per line (never pickle: this side holds untrusted code).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import math
import os
import pickle
import resource
import selectors
import shutil
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any, BinaryIO

from synthstats.judge import confine

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36
_MAX_RESULT_BYTES = 1 << 20
# A model description, a JSON string the worker passes on unparsed: its constants are
# capped in describe.py, this bounds the rest.
_MAX_DESCRIPTION_BYTES = 16 << 20
_MESSAGE_CHARS = 400
# What phase 1 may fail with; scores and sampling failures come from phase 2 only.
_PHASE_ONE_KINDS = frozenset(
    {"syntax", "forbidden", "runtime", "no_model", "data_mismatch", "forbidden_model"}
    | {"memory", "timeout", "crashed"}
)
_OUTPUT_TAIL_BYTES = 600
_KILL_ROUNDS = 200
_EXIT_POLL_S = 0.05
_OPEN_FILES = 512


def main() -> None:
    """Entry point inside the sandbox: `--uid N` drops to that user first (when root)."""
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints from libraries must not corrupt the protocol
    if "--uid" in sys.argv:
        _drop_to(int(sys.argv[sys.argv.index("--uid") + 1]))
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # after the uid change, which clears it
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    _prctl(_PR_SET_DUMPABLE, 0)
    probe = tempfile.mkdtemp(prefix="probe-", dir=os.environ.get("TMPDIR"))
    os.makedirs(_compile_dir(), exist_ok=True)
    confined = confine.available(probe, _compile_dir(), _work_dir(), sandboxed=_sandboxed())
    os.rmdir(probe)
    warnings.simplefilter("ignore")  # library notices would bury real errors in the log
    from synthstats.judge import runner

    compile_mode = sys.argv[sys.argv.index("--compile") + 1]
    warm_up_s = runner.warm_up(compile_mode)
    # Every program's children are forked from here: with PyMC's objects frozen, their
    # collections neither walk this heap (about 7% of a program's time) nor copy its pages.
    gc.collect()
    gc.freeze()
    hello = {"ready": True, "warm_up_s": warm_up_s, "pid": os.getpid(), "confined": confined}
    _reply(replies, hello)
    requests = sys.stdin.buffer
    while (request := _read_request(requests)) is not None:
        _reply(replies, score_contained(request, confined=confined))


def score_contained(request: dict[str, Any], *, confined: bool = False) -> dict[str, Any]:
    """Phase 1 in one contained child (the program runs there and describes its model),
    then phase 2 in a second child forked from this pristine process (it validates,
    rebuilds, samples and scores). Both share the program's timeout; returns score fields
    with seconds. confined: phase 1 confines itself (confine.py) first, and fails if it
    cannot; phase 2, trusted, keeps the worker's compile dir, so its compiles are reused."""
    limits = request["limits"]
    start = time.perf_counter()
    deadline = start + limits["timeout_s"]
    described = _in_child(
        _describe_phase, request, deadline, _MAX_DESCRIPTION_BYTES, confined=confined
    )
    if "description" in described:
        request = {**request, "description": described["description"]}
        verdict = _in_child(_score_phase, request, deadline, _MAX_RESULT_BYTES)
    else:
        verdict = described
    verdict["seconds"] = time.perf_counter() - start
    return verdict


def _in_child(
    phase: Callable[[dict[str, Any]], dict[str, Any]],
    request: dict[str, Any],
    deadline: float,
    max_result: int,
    *,
    confined: bool = False,
) -> dict[str, Any]:
    limits = request["limits"]
    program_dir = tempfile.mkdtemp(prefix="program-", dir=os.environ.get("TMPDIR"))
    result_read, result_write = os.pipe()
    output_read, output_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        _child(phase, request, program_dir, result_write, output_write, confined)
    os.close(result_write)
    os.close(output_write)
    try:
        verdict = _watch(pid, result_read, output_read, deadline, limits, max_result)
    finally:
        _kill_descendants(pid)
        os.close(result_read)
        os.close(output_read)
        shutil.rmtree(program_dir, ignore_errors=True)
    if phase is _describe_phase:
        return _phase_one_verdict(verdict)
    return verdict


def _phase_one_verdict(verdict: dict[str, Any]) -> dict[str, Any]:
    """What phase 1 may say: a description, or a failure of a phase-1 kind. Anything else
    (a forged score, say) is a malformed result."""
    if verdict.get("ok") is True and isinstance(verdict.get("description"), str):
        return {"description": verdict["description"]}
    kind, message = verdict.get("error_kind"), verdict.get("message")
    if (
        verdict.get("ok") is False
        and isinstance(kind, str)
        and kind in _PHASE_ONE_KINDS
        and isinstance(message, str)
    ):
        return _failure(kind, message[:_MESSAGE_CHARS])
    return _failure("crashed", "the program's child sent a malformed result")


def _describe_phase(request: dict[str, Any]) -> dict[str, Any]:
    """In the untrusted child: its own user and mount namespace, an empty compile dir."""
    if _sandboxed():  # nested in confine.py's namespace, the id maps need bwrap's uid
        confine.isolate_pid_namespace(request["limits"]["max_file_bytes"])
    from synthstats.judge.runner import describe_source

    result = describe_source(request["source"], request["data"], tuple(request["observed"]))
    if result["ok"]:  # one string to the worker: phase 2 parses it, under its own limits
        result["description"] = json.dumps(result["description"])
    return result


def _score_phase(request: dict[str, Any]) -> dict[str, Any]:
    from synthstats.judge.runner import Budget, score_description

    return score_description(
        request["description"],
        request["data"],
        tuple(request["observed"]),
        Budget(**request["budget"]),
        request.get("reference_elpd"),
    )


def _child(
    phase: Callable[[dict[str, Any]], dict[str, Any]],
    request: dict[str, Any],
    program_dir: str,
    result_fd: int,
    output_fd: int,
    confined: bool,
) -> None:
    """In the forked child: contain, run the phase, write the JSON result, exit. Never
    returns."""
    try:
        os.setpgid(0, 0)
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        os.dup2(output_fd, 1)
        os.dup2(output_fd, 2)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.closerange(3, result_fd)
        os.closerange(result_fd + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        if confined:
            scratch = request["limits"]["max_file_bytes"]
            confine.confine(
                program_dir, _compile_dir(), _work_dir(), scratch, sandboxed=_sandboxed()
            )
        os.chdir(program_dir)
        os.environ["TMPDIR"] = os.environ["MPLCONFIGDIR"] = program_dir
        tempfile.tempdir = program_dir
        _limit(request["limits"])
        result = phase(request)
        payload = json.dumps(result).encode()
        while payload:
            payload = payload[os.write(result_fd, payload) :]
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(0)


def _limit(limits: dict[str, Any]) -> None:
    cpu = math.ceil(limits["timeout_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_mb"] << 20,) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["max_file_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (_OPEN_FILES, _OPEN_FILES))
    # The limit counts every task of this user, so allow what already runs plus the budget.
    tasks = _tasks_of(os.getuid()) + limits["max_processes"]
    resource.setrlimit(resource.RLIMIT_NPROC, (tasks, tasks))


def _watch(
    pid: int,
    result_fd: int,
    output_fd: int,
    deadline: float,
    limits: dict[str, Any],
    max_result: int,
) -> dict[str, Any]:
    """Collects the child's result and output until it exits or breaks a limit."""
    result, output = bytearray(), bytearray()
    printed = 0
    status = None
    exit_fd = _exit_notice(pid)
    # Without a pidfd an exit is seen only by polling, and every score waits for it.
    poll_s = math.inf if exit_fd is not None else _EXIT_POLL_S
    with contextlib.ExitStack() as cleanup, selectors.DefaultSelector() as selector:
        for fd in (result_fd, output_fd, exit_fd):
            if fd is not None:
                selector.register(fd, selectors.EVENT_READ)
        if exit_fd is not None:
            cleanup.callback(os.close, exit_fd)
        while status is None:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return _failure("timeout", f"no verdict within {limits['timeout_s']:g} s")
            for key, _ in selector.select(timeout=min(remaining, poll_s)):
                if key.fd == exit_fd:
                    continue
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                elif key.fd == output_fd:
                    printed += len(chunk)
                    output = (output + chunk)[-_OUTPUT_TAIL_BYTES:]
                    if printed > limits["max_output_bytes"]:
                        return _failure(
                            "runtime", f"printed more than {limits['max_output_bytes']} bytes"
                        )
                else:
                    result += chunk
                    if len(result) > max_result:
                        return _failure("crashed", "the child sent an oversized result")
            done, wait_status = os.waitpid(pid, os.WNOHANG)
            if done:
                status = wait_status
    result += _drain(result_fd, max_result)
    return _verdict(status, bytes(result), bytes(output), limits)


def _exit_notice(pid: int) -> int | None:
    """A pidfd of the child, readable once it has exited; None where the kernel has none."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _verdict(status: int, result: bytes, output: bytes, limits: dict[str, Any]) -> dict[str, Any]:
    if result:
        try:
            verdict = json.loads(result)
        except (ValueError, RecursionError):
            verdict = None
        if isinstance(verdict, dict):
            return verdict
        try:  # several verdicts: copies of the child, made by a program that forked
            json.JSONDecoder().raw_decode(result.decode())
        except (ValueError, RecursionError):
            return _failure("crashed", "the child sent a malformed result")
        return _failure("runtime", "the program forked: several processes reported a verdict")
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        if number == signal.SIGXCPU:
            return _failure("timeout", f"CPU time limit ({math.ceil(limits['timeout_s'])} s)")
        if number == signal.SIGXFSZ:
            return _failure("runtime", f"wrote a file over {limits['max_file_bytes']} bytes")
        if number == signal.SIGKILL:
            return _failure("memory", "killed (SIGKILL), most likely for memory")
        return _failure("crashed", f"died of {signal.Signals(number).name}{_tail(output)}")
    return _failure("crashed", f"exited without a verdict{_tail(output)}")


def _failure(kind: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error_kind": kind, "message": message}


def _tail(output: bytes) -> str:
    text = output.decode(errors="replace").strip()
    return f": ...{text[-300:]}" if text else ""


def _drain(fd: int, max_result: int) -> bytes:
    """What is left in a pipe after the child exited, without waiting on its descendants."""
    os.set_blocking(fd, False)
    data = bytearray()
    while len(data) <= max_result:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _kill_descendants(pid: int) -> None:
    """SIGKILLs the child's process group, then every process reparented to this subreaper
    (a program's children that escaped the group), until none is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    for _ in range(_KILL_ROUNDS):
        children = _children_of(os.getpid())
        if not children:
            return
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        _reap()
        time.sleep(0.01)


def _reap() -> None:
    while True:
        try:
            done, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if not done:
            return


def _children_of(parent: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    fields = stat.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                children.append(int(entry))
    return children


def _tasks_of(uid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry}/task"))
            except OSError:
                continue
    return count


def _work_dir() -> str:
    return os.environ["SYNTHSTATS_JUDGE_WORK_DIR"]


def _compile_dir() -> str:
    return os.path.join(_work_dir(), "pytensor")


def _sandboxed() -> bool:
    return os.environ.get("SYNTHSTATS_JUDGE_CONTAINMENT") == "bwrap"


def _drop_to(uid: int) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def _read_request(stream: BinaryIO) -> dict[str, Any] | None:
    header = stream.read(8)
    if len(header) < 8:
        return None
    return pickle.loads(stream.read(int.from_bytes(header, "big")))


def _reply(stream, message: dict[str, Any]) -> None:
    stream.write(json.dumps(message) + "\n")


if __name__ == "__main__":
    main()
