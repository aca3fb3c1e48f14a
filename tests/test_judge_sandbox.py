"""The hostile corpus: generated code is hostile until proven otherwise.

Each hostile program must end as a failure of the right kind, write nothing outside its
temp dir, leak no secret of the parent's environment, and leave the judge able to score
the next program within its timeout plus 10 s. Programs that the gate stops are also run
past the gate, straight into a worker, to check the OS containment behind it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import synthstats
from synthstats.config import JudgeConfig
from synthstats.envs.base import Env
from synthstats.judge import sandbox
from synthstats.judge import worker as worker_module
from synthstats.judge.sandbox import SandboxedWorker, bwrap_works
from synthstats.judge.score import Score
from synthstats.judge.scoring import prepare, score_program
from synthstats.judge.unsandboxed import score_trusted

SECRET = "sk-synthstats-canary-5f3a9d"
SECRET_VARIABLES = ("OPENAI_API_KEY", "WANDB_API_KEY", "TINKER_API_KEY", "HF_TOKEN")
# LOO refits off: these tests are about containment and the pool, not LOO (test_judge_loo.py).
CFG = JudgeConfig(
    name="hostile", draws=100, tune=100, chains=2, timeout_s=15, memory_mb=3072, loo_refits=0
)

AGE = [1, 1.5, 1.5, 1.5, 2.5, 4, 5, 5, 7, 8, 8.5, 9, 9.5, 9.5, 10, 12, 12, 13, 13, 14.5, 15.5]
AGE += [15.5, 16.5, 17, 22.5, 29, 31.5]
LENGTH = [1.80, 1.85, 1.87, 1.77, 2.02, 2.27, 2.15, 2.26, 2.47, 2.19, 2.26, 2.40, 2.39, 2.41]
LENGTH += [2.50, 2.32, 2.32, 2.43, 2.47, 2.56, 2.65, 2.47, 2.64, 2.56, 2.70, 2.72, 2.57]
ENV = Env(
    name="dugongs",
    description="length of dugongs by age",
    variables={"age": "years", "length": "metres"},
    observed=("length",),
    data={"age": np.array(AGE), "length": np.array(LENGTH)},
    reference_program="",
)
GOOD = """import pymc as pm
import numpy as np
with pm.Model() as model:
    a = pm.Normal('a', 0, 5)
    b = pm.HalfNormal('b', 2)
    s = pm.HalfNormal('s', 1)
    pm.Normal('length', a + b * np.log(data['age']), s, observed=data['length'])
"""
# The classic escape past the gate: os's globals through a subclass of object.
ESCAPE = (
    "g = [c for c in ().__class__.__base__.__subclasses__()"
    " if c.__name__ == '_wrap_close'][0].__init__.__globals__\n"
)

# Behind the gate, from the program and from a child it leaves behind to wait for phase 2:
# open the memory (read-write, as a debugger would) and environment of every process
# outside its own PID namespace that /proc lists: the worker, phase 2, the process waiting
# for the program. ptrace(2) itself can only name pids of the program's namespace, all its
# own. Non-dumpable, every process outside refuses (a dumpable waiter once did not).
PROCESS_MEMORY = """
imp = g['__builtins__']['__import__']
osm = imp('os')
def reach_others():
    mine = osm.readlink('/proc/self/ns/pid')
    seen, reached = 0, []
    for name in [n for n in osm.listdir('/proc') if n.isdigit()]:
        try:
            if osm.readlink(f'/proc/{name}/ns/pid') == mine:
                continue
        except OSError:
            pass
        seen += 1
        for part, flags in (('mem', osm.O_RDWR), ('environ', osm.O_RDONLY)):
            try:
                osm.close(osm.open(f'/proc/{name}/{part}', flags))
                reached.append(f'{part} {name}')
            except OSError:
                pass
    return seen, reached
if osm.fork() == 0:
    while True:
        reach_others()
seen, reached = reach_others()
raise ValueError(f'saw {seen} others, reached {reached}')
"""

needs_bwrap = pytest.mark.skipif(not bwrap_works(), reason="bubblewrap cannot run here")


def fenced(source: str) -> str:
    return f"<think>plan</think>\n```python\n{source}```\n"


@pytest.fixture(scope="module")
def canaries(tmp_path_factory) -> list[Path]:
    return [
        tmp_path_factory.mktemp("canary") / "canary.txt",
        Path(synthstats.__file__).parent / "judge-test-canary.txt",
    ]


@pytest.fixture(scope="module")
def host_secret_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("secret") / "secret.txt"
    path.write_text(SECRET)
    return path


@pytest.fixture(scope="module")
def seed(tmp_path_factory) -> Path:
    """A compile dir warmed with GOOD: the timeout can stay short on a loaded machine."""
    path = tmp_path_factory.mktemp("seed") / "pytensor"
    score_trusted([(ENV, GOOD)], CFG, path)
    return path


@pytest.fixture(scope="module")
def worker(seed):
    with pytest.MonkeyPatch.context() as patch:
        for name in SECRET_VARIABLES:
            patch.setenv(name, SECRET)
        judge = SandboxedWorker(CFG, compile_seed=seed)
        judge.start()
        yield judge
        judge.close()


@pytest.fixture(scope="module")
def good_score(worker) -> Score:
    score = worker.score(GOOD, ENV)
    assert score.ok, score
    return score


def judge(worker: SandboxedWorker, completion: str) -> Score:
    prepared = prepare(completion)
    return prepared if isinstance(prepared, Score) else worker.score(prepared, ENV)


def assert_contained(worker, name, score, kind, canaries, good_score):
    assert score.error_kind == kind, (name, score)
    assert SECRET not in score.message, name
    for canary in canaries:
        written = canary.exists()
        canary.unlink(missing_ok=True)
        assert not written, f"{name} wrote {canary}"
    start = time.perf_counter()
    after = worker.score(GOOD, ENV)
    # Not hung: the bound leaves room for a worker restart's warm-up on a loaded machine.
    assert time.perf_counter() - start < CFG.timeout_s + 60, name
    assert after.ok and after.elpd_loo == good_score.elpd_loo, (name, after)
    if worker.uid is not None:  # nothing of the program's is left running
        assert _processes_of(worker.uid) == 1, name


def _processes_of(uid: int) -> int:
    return sum(1 for entry in os.listdir("/proc") if entry.isdigit() and _owner(entry) == uid)


def _owner(pid: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def hostile_corpus(canaries: list[Path]) -> list[tuple[str, str, str]]:
    """(name, program, error kind through the full judge)."""
    first, second = (str(path) for path in canaries)
    return [
        ("shell", "import os\nos.system('touch " + first + "')\n", "forbidden"),
        (
            "subprocess",
            "import subprocess\nsubprocess.run(['sh', '-c', 'touch " + first + "'])\n",
            "forbidden",
        ),
        ("passwd", "print(open('/etc/passwd').read())\n", "forbidden"),
        ("open_canary", f"open({first!r}, 'w').write('x')\n", "forbidden"),
        (
            "numpy_canary",
            f"import numpy as np\nnp.save({second!r}, np.zeros(3))\n",
            "forbidden",
        ),
        (
            "socket",
            "import socket\nsocket.create_connection(('127.0.0.1', 80))\n",
            "forbidden",
        ),
        (
            "environ_chain",
            "import pytensor\nraise ValueError(str(pytensor.configdefaults.os.environ))\n",
            "forbidden",
        ),
        ("subclasses", ESCAPE + "g['system']('touch " + first + "')\n", "forbidden"),
        ("builtins", "__builtins__['open']('" + first + "', 'w')\n", "forbidden"),
        ("getattr", "f = getattr(data, '__cl' + 'ass__')\n", "forbidden"),
        ("fork_bomb", "import os\nwhile True:\n    os.fork()\n", "forbidden"),
        ("infinite_loop", "while True:\n    pass\n", "timeout"),
        ("memory_bomb", "x = ' ' * 10**11\n", "memory"),
        ("numpy_memory_bomb", "import numpy as np\nx = np.ones((10**6, 10**5))\n", "memory"),
        ("stdout_flood", "while True:\n    print('x' * 100000)\n", "runtime"),
    ]


def test_hostile_corpus_through_the_judge(worker, good_score, canaries):
    for name, program, kind in hostile_corpus(canaries):
        score = judge(worker, fenced(program))
        assert_contained(worker, name, score, kind, canaries, good_score)
        assert score.seconds < CFG.timeout_s + 10, name


@needs_bwrap
def test_containment_behind_the_gate(worker, good_score, canaries, host_secret_file):
    """Programs the gate would refuse, sent straight to a worker: the OS must hold."""
    first, second = (str(path) for path in canaries)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    real_import = "imp = g['__builtins__']['__import__']\n"
    cases = [
        ("environ", ESCAPE + "raise ValueError(str(dict(g['environ'])))\n", "runtime"),
        ("host_file", ESCAPE + f"fd = g['open']({str(host_secret_file)!r}, 0)\n", "runtime"),
        (
            "os_open_canary",
            ESCAPE + f"fd = g['open']({first!r}, g['O_CREAT'] | g['O_WRONLY'])\n",
            "runtime",
        ),
        ("numpy_canary", f"import numpy as np\nnp.save({second!r}, np.zeros(3))\n", "runtime"),
        (
            "shell_canary",
            ESCAPE + f"rc = g['system']('echo pwned > {first}')\nraise ValueError(rc)\n",
            "runtime",
        ),
        (
            "network",
            ESCAPE
            + real_import
            + f"imp('socket').create_connection(('127.0.0.1', {port}), timeout=2)\n",
            "runtime",
        ),
        ("fork_bomb", ESCAPE + "while True:\n    g['fork']()\n", "runtime"),
        # in its own PID namespace the program cannot name its parent: it lives on
        ("kill_worker", ESCAPE + "g['kill'](g['getppid'](), 9)\n", "no_model"),
        ("process_memory", ESCAPE + PROCESS_MEMORY, "runtime"),
    ]
    try:
        for name, program, kind in cases:
            score = worker.score(program, ENV)
            if name == "process_memory":
                assert "reached []" in score.message and "saw 0 " not in score.message, score
            assert_contained(worker, name, score, kind, canaries, good_score)
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        listener.close()


def _host_files(worker: SandboxedWorker) -> set[str]:
    """Every file in the worker's host folder, bar its own compile cache's modules."""
    root = worker._work_dir
    return {str(path.relative_to(root)) for path in root.rglob("*") if not path.is_dir()}


def test_programs_leave_nothing_behind_and_cannot_poison_the_compile_cache(
    worker, good_score, canaries
):
    """Scratch is a capped tmpfs gone with its program; the worker's host folder and compile
    dir are read-only to programs (a planted pickle once ran on the next cache refresh)."""
    if not worker.confined:
        pytest.skip("no unprivileged user namespaces here")
    before = _host_files(worker)
    first = str(canaries[0])
    # A pickle that runs a shell command when unpickled, as PyTensor's cache refresh would.
    poison = f"b'cposix\\nsystem\\n(Vtouch {first}\\ntR.'"
    plant = (
        "base = g['environ']['SYNTHSTATS_JUDGE_WORK_DIR']\n"
        "def put(path, payload=b'x'):\n"
        "    g['makedirs'](g['path'].dirname(g['path'].abspath(path)), exist_ok=True)\n"
        "    fd = g['open'](path, g['O_CREAT'] | g['O_WRONLY'])\n"
        "    g['write'](fd, payload)\n"
    )
    cases = [
        ("disk_fill", "for i in range(12):\n    put(f'fill{i}', b'x' * (8 << 20))\n"),
        ("left_behind", "put('marker')\nput('/tmp/marker')\n"),
        (
            "compile_cache",
            "cache = [d for d in g['listdir'](base + '/pytensor') if d.startswith('compiledir')]\n"
            f"put(base + '/pytensor/' + cache[0] + '/tmpjudgepoison/key.pkl', {poison})\n"
            "put(base + '/pytensor/' + cache[0] + '/tmpjudgepoison/mod.so')\n"
            "raise ValueError('planted')\n",
        ),
        ("host_folder", "put(base + '/tmp/marker')\n"),
        ("host_log", "g['symlink']('/proc/self/environ', base + '/worker.log')\n"),
        ("dev_shm", "put('/dev/shm/marker')\n"),
        ("parent_stderr", "fd = g['open']('/proc/%d/fd/2' % g['getppid'](), g['O_WRONLY'])\n"),
        ("parent_memory", "fd = g['open']('/proc/%d/mem' % g['getppid'](), g['O_RDONLY'])\n"),
        (
            "ptrace_parent",  # PTRACE_ATTACH to the worker: -1 (EPERM), it is non-dumpable
            "libc = g['__builtins__']['__import__']('ctypes').CDLL(None)\n"
            "raise ValueError('ptrace=%d' % libc.ptrace(16, g['getppid'](), 0, 0))\n",
        ),
    ]
    for name, body in cases:
        score = worker.score(ESCAPE + plant + body, ENV)
        assert_contained(worker, name, score, "runtime", canaries, good_score)
        assert _host_files(worker) - before == set(), name
        if name == "disk_fill":  # 96 MB into a 64 MB scratch
            assert "No space left on device" in score.message, score
        if name == "ptrace_parent":
            assert "ptrace=-1" in score.message, score
    look = worker.score(ESCAPE + "raise ValueError(str(g['listdir']('.')))\n", ENV)
    assert look.error_kind == "runtime", look
    assert "marker" not in look.message and "fill" not in look.message, look


def test_the_parent_never_reads_files_a_worker_planted(worker, good_score):
    """A FIFO planted where the worker's log once was (the parent hung on it), a symlink to
    the parent's environment beside it, then the worker killed mid-program (a program can
    no longer name its worker, so the test kills it): `crashed` at once, and the message
    holds nothing of either."""
    worker.score(GOOD, ENV)  # a running worker, whatever ran before
    os.mkfifo(worker._work_dir / "worker.log")
    (worker._work_dir / "worker.err").symlink_to("/proc/self/environ")
    killer = threading.Timer(2.0, sandbox._kill_session, args=(worker._process.pid,))
    start = time.perf_counter()
    killer.start()
    score = worker.score("while True:\n    pass\n", ENV)
    killer.join()
    assert time.perf_counter() - start < CFG.timeout_s
    assert score.error_kind == "crashed" and "PATH=" not in score.message, score
    assert SECRET not in score.message
    after = worker.score(GOOD, ENV)  # on a restarted worker (which costs a warm-up)
    assert after.ok and after.elpd_loo == good_score.elpd_loo, after


def test_a_flood_on_the_worker_stderr_keeps_only_its_end():
    flood = "import sys; sys.stderr.write('x' * 10**7 + 'END'); sys.stderr.flush()"
    process = subprocess.Popen([sys.executable, "-c", flood], stderr=subprocess.PIPE)
    tail = sandbox._Tail(process.stderr)
    assert process.wait(timeout=60) == 0  # never blocked on a full pipe
    text = tail.text()
    tail.close()
    assert text.endswith("END") and len(text) <= 4096


@pytest.mark.parametrize("exit_notice", ["pidfd", "polling"])
def test_a_verdict_comes_when_the_child_exits_though_a_leftover_holds_its_pipes(
    exit_notice, monkeypatch
):
    """A child that leaves a process behind holding its result and output pipes is done
    when it exits, seen through a pidfd or, where the kernel has none, by polling."""
    if exit_notice == "polling":
        monkeypatch.setattr(worker_module, "_exit_notice", lambda pid: None)
    result_read, result_write = os.pipe()
    output_read, output_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            leftover = os.fork()
            if leftover == 0:
                time.sleep(60)
            else:
                os.write(output_write, b"some output\n")
                os.write(result_write, json.dumps({"ok": True, "leftover": leftover}).encode())
        finally:
            os._exit(0)
    os.close(result_write)
    os.close(output_write)
    limits = {"timeout_s": 20, "max_output_bytes": 1000}
    try:
        verdict = worker_module._watch(
            pid, result_read, output_read, time.perf_counter() + 20, limits, 1 << 20
        )
    finally:
        os.close(result_read)
        os.close(output_read)
    assert verdict["ok"] is True, verdict
    os.kill(verdict["leftover"], signal.SIGKILL)


def test_scores_are_identical_without_bwrap_and_keep_the_environment_scrubbed(
    good_score, seed, monkeypatch
):
    monkeypatch.setattr(sandbox, "_warned_uncontained", False)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with pytest.warns(RuntimeWarning, match="without bubblewrap"):
        uncontained = SandboxedWorker(JudgeConfig(**{**vars(CFG), "sandbox": "none"}), seed)
        uncontained.start()
    with uncontained:
        leak = uncontained.score(ESCAPE + "raise ValueError(str(dict(g['environ'])))\n", ENV)
        assert leak.error_kind == "runtime" and "PYTENSOR_FLAGS" in leak.message
        assert SECRET not in leak.message
        again = uncontained.score(GOOD, ENV)
        assert (again.elpd_loo, again.se, again.p_loo) == (
            good_score.elpd_loo,
            good_score.se,
            good_score.p_loo,
        )


def test_a_worker_scores_exactly_as_the_trusted_path_with_the_hosts_openblas(
    good_score, tmp_path, monkeypatch
):
    # The CI machine pins OPENBLAS_CORETYPE; a worker that dropped it summed dot products
    # with another kernel, and the same program scored 0.36 nats apart in the two paths.
    monkeypatch.setenv("OPENBLAS_VERBOSE", "0")
    environment = sandbox.sandbox_environment(tmp_path)
    assert environment["OPENBLAS_VERBOSE"] == "0"
    assert environment["OPENBLAS_NUM_THREADS"] == "1"
    assert environment.get("OPENBLAS_CORETYPE") == os.environ.get("OPENBLAS_CORETYPE")
    trusted = score_trusted([(ENV, GOOD)], CFG, tmp_path / "pytensor")[0]
    assert (trusted["elpd_loo"], trusted["se"]) == (good_score.elpd_loo, good_score.se)


def test_score_program_scores_one_completion_in_a_fresh_worker(good_score):
    assert score_program(ENV, "```python\nimport os\n```", CFG).error_kind == "forbidden"
    cold = dataclasses.replace(CFG, timeout_s=180)  # no compile seed: a cold compile
    one_shot = score_program(ENV, fenced(GOOD), cold)
    assert one_shot.ok and one_shot.elpd_loo == good_score.elpd_loo


def test_unknown_sandbox_setting_is_refused():
    with pytest.raises(ValueError, match="auto, bwrap or none"):
        sandbox.containment_for("docker")
