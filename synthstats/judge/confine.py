"""Confines one program's child inside the worker: its own user and mount namespace.

Called in the forked child before any program code runs. Afterwards the child sees:
- its scratch dir as a fresh tmpfs capped at `scratch_bytes`, gone when the child and
  everything it started have ended (no file it writes reaches the next program or the host);
- the worker's PyTensor compile dir through an overlay whose writes land in that tmpfs, so a
  file it plants there (a pickled cache key, a compiled module) is never loaded by the
  worker or by the next program;
- the worker's work dir read-only and, under bubblewrap, /tmp and /dev read-only too;
- no capabilities in its namespace (so it cannot undo the mounts) and no new privileges.
Linux only; `available()` says whether this kernel lets an unprivileged process do it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_MS_RDONLY = 1
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_NOEXEC = 8
_MS_REMOUNT = 32
_MS_NOATIME = 1024
_MS_NODIRATIME = 2048
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_MS_RELATIME = 1 << 21
_ST_RELATIME = 4096
# statvfs flags that are also mount flags (same bits), which a remount must keep.
_KEPT_FLAGS = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC | _MS_NOATIME | _MS_NODIRATIME
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_DUMPABLE = 4
_PR_SET_PDEATHSIG = 1
_CAP_VERSION_3 = 0x20080522
_OVERLAY = ".judge-overlay"

_libc = ctypes.CDLL(None, use_errno=True)


class ConfineError(OSError):
    """A step of the confinement failed: the program must not run."""


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def confine(
    scratch: str, compile_dir: str, work_dir: str, scratch_bytes: int, *, sandboxed: bool
) -> None:
    """Confines the calling process (single-threaded: a freshly forked child).

    scratch: the program's cwd and TMPDIR, inside work_dir; compile_dir: the worker's
    PyTensor compile dir, inside work_dir; sandboxed: under bubblewrap, whose private /tmp
    and /dev are then made read-only as well (without it they are the host's own).
    """
    uid, gid = os.getuid(), os.getgid()
    # A non-dumpable process (the worker is one) cannot write its own uid_map.
    _prctl(_PR_SET_DUMPABLE, 1)
    _check(_libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS), "unshare")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{uid} {uid} 1")
    _write("/proc/self/gid_map", f"{gid} {gid} 1")
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
    _mount(work_dir, work_dir, None, _MS_BIND | _MS_REC)
    _mount("tmpfs", scratch, "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={scratch_bytes},mode=0700")
    upper, work = (os.path.join(scratch, _OVERLAY, name) for name in ("upper", "work"))
    os.makedirs(upper)
    os.makedirs(work)
    options = f"lowerdir={compile_dir},upperdir={upper},workdir={work}"
    _mount("overlay", compile_dir, "overlay", 0, options)
    for path in [work_dir] + (["/tmp", "/dev"] if sandboxed else []):
        _read_only(path)
    _drop_capabilities()
    _prctl(_PR_SET_DUMPABLE, 0)


def available(scratch: str, compile_dir: str, work_dir: str, *, sandboxed: bool) -> bool:
    """Whether confine() works here: tried in a forked child that exits at once."""
    pid = os.fork()
    if pid == 0:
        try:
            confine(scratch, compile_dir, work_dir, 1 << 20, sandboxed=sandboxed)
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def isolate_pid_namespace(max_file_bytes: int) -> None:
    """Phase 1's own user, mount and PID namespace, with an empty size-capped tmpfs over
    the PyTensor compile dir: nothing it compiles or plants there reaches the worker or
    phase 2, and it cannot name (so not signal) either of them.
    A second user namespace locks that mount, so the program cannot unmount it. Where
    user namespaces are unavailable (a locked-down kernel) the program still runs, without
    these walls (the README says what then remains)."""
    compile_dir = os.environ.get("PYTENSOR_FLAGS", "").partition("base_compiledir=")[2]
    if not compile_dir or not os.path.isdir(compile_dir):
        return
    uid, gid = os.getuid(), os.getgid()
    # Its own /proc files must be its own to write its id maps (non-dumpable again below).
    _prctl(_PR_SET_DUMPABLE, 1)
    if _libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS | _CLONE_NEWPID) != 0:
        return
    _map_root_to(uid, gid)
    options = f"size={max_file_bytes},mode=0700"
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
    _mount("tmpfs", compile_dir, "tmpfs", _MS_NOSUID | _MS_NODEV, options)
    _check(_libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS), "unshare (locking the mounts)")
    _map_root_to(0, 0)
    # The program runs as pid 1 of a PID namespace of its own: no pid it can name is the
    # worker's or phase 2's, so it cannot signal them. This process only waits for it, and
    # is non-dumpable from here on: it stays outside that namespace, where /proc still lists
    # it, and a dumpable waiter's memory, open to the program, would be a way out.
    _prctl(_PR_SET_DUMPABLE, 0)
    pid = os.fork()
    if pid:
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):  # die of the same signal: the worker reads it
            with contextlib.suppress(OSError, ValueError):
                signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
            os.kill(os.getpid(), os.WTERMSIG(status))
        os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    os.setpgid(0, 0)  # kill(0, ...) then reaches only itself; the worker reaps it as subreaper


def _map_root_to(uid: int, gid: int) -> None:
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"0 {uid} 1")
    _write("/proc/self/gid_map", f"0 {gid} 1")


def _read_only(path: str) -> None:
    """Remounts one mount point read-only, keeping the flags a remount may not drop."""
    current = os.statvfs(path).f_flag
    flags = current & _KEPT_FLAGS
    if current & _ST_RELATIME:
        flags |= _MS_RELATIME
    _mount(None, path, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | flags)


def _drop_capabilities() -> None:
    header = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), data), "capset")
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    encoded = [None if value is None else value.encode() for value in (source, target, fstype)]
    result = _libc.mount(*encoded, ctypes.c_ulong(flags), data.encode() if data else None)
    _check(result, f"mount {target}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as file:
        file.write(text)


def _prctl(option: int, value: int) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0), f"prctl({option})")


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise ConfineError(errno, f"{what} failed: {os.strerror(errno)}")
