"""The sandbox's mount order: a Python installation under /tmp must stay visible."""

import sys
from pathlib import Path

import synthstats
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


def test_only_the_package_folder_of_a_checkout_is_bound(tmp_path: Path):
    package = Path(synthstats.__file__).resolve().parent
    argv = bwrap_prefix(tmp_path)
    bound = {argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg in ("--ro-bind", "--bind")}
    assert any(package.is_relative_to(path) for path in bound)
    if not any(package.is_relative_to(path) for path in (sys.prefix, sys.base_prefix)):
        assert str(package.parent) not in bound  # an editable install: the checkout stays out
