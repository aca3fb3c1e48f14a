"""The sandbox's mount order: a Python installation under /tmp must stay visible."""

from pathlib import Path

from synthstats.judge.sandbox import _python_paths, bwrap_prefix


def test_private_tmp_is_mounted_before_the_python_installation(tmp_path: Path):
    argv = bwrap_prefix(tmp_path)
    tmpfs = argv.index("--tmpfs")
    python = set(_python_paths())
    python_binds = [
        i for i, arg in enumerate(argv[:-1]) if arg == "--ro-bind" and argv[i + 1] in python
    ]
    assert python_binds, "the Python installation is not bound into the sandbox"
    assert tmpfs < min(python_binds)
    assert argv.index("--bind") > tmpfs  # the work dir, which may live under /tmp too
