"""How phase 2 compiles a model's functions: one C module per function, built cheaply.

PyTensor's default linker compiles one C module per distinct op, and a new model structure
brings a dozen of them (fused elementwise code unique to the model), each a g++ run that
spends most of its time parsing the same Python and NumPy headers at -O3. The judge's
functions are small and called tens of thousands of times from Python, so instead:

- the whole function is one C module (PyTensor's `c` linker): one g++ run, not a dozen,
  and a faster call (no per-op dispatch);
- -O1 without debug information, and the headers every module includes are precompiled
  once per compile directory (a GCC precompiled header, checked before it is used).

A function with an op that has no C code is linked per op instead, and so is one whose
single module raises when run (some ops' C code is only right in a module of its own).
Which linker a judge uses is `judge.compile` (`whole_function`, the default; `per_op`,
PyTensor's own, kept so `synthstats bench judge-compile` can measure one against the other
in the same run). Phase 1 never compiles and cannot write the compile dir (confine.py), so
the precompiled header, like the modules, holds only what phase 2 built.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytensor
from pytensor.compile.mode import Mode
from pytensor.graph.utils import MethodNotDefined
from pytensor.link.basic import Container
from pytensor.link.c.basic import CLinker
from pytensor.link.vm import VMLinker

logger = logging.getLogger(__name__)

COMPILE_MODES = ("whole_function", "per_op")

# The headers PyTensor's generated modules include, in their order.
_COMMON_HEADERS = (
    "Python.h",
    "pytensor_mod_helper.h",
    "math.h",
    "numpy/arrayobject.h",
    "numpy/arrayscalars.h",
    "numpy/npy_math.h",
    "vector",
    "algorithm",
)
_OPTIMISATION = ["-O1", "-g0"]

_precompiled_header: Path | None = None
_prepared_for: Path | None = None
_seconds = [0.0]


def compiled_seconds() -> float:
    """Seconds this process has spent making functions' thunks (code generation and the
    C compiler) with the judge's linkers, for the judge's time shares."""
    return _seconds[0]


class _Timed:
    def make_thunk(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self._make_thunk(*args, **kwargs)
        finally:
            _seconds[0] += time.perf_counter() - start


class PerOpLinker(_Timed, VMLinker):
    """PyTensor's default linker (`cvm`: one C module per op, -O3), timed."""

    def _make_thunk(self, *args: Any, **kwargs: Any) -> Any:
        return VMLinker.make_thunk(self, *args, **kwargs)


class WholeFunctionLinker(_Timed, CLinker):
    """PyTensor's `c` linker with the judge's compiler flags, timed; a function with an
    op that has no C code is linked per op instead. The precompiled header stays out of
    the module's cache key: it only saves parsing, and its path differs between workers,
    which would stop them sharing modules compiled from a common seed."""

    _keying = False

    def compile_args(self) -> list[str]:
        args = [arg for arg in super().compile_args() if not arg.startswith("-O")]
        args += _OPTIMISATION
        if _precompiled_header is not None and not self._keying:
            args += ["-include", str(_precompiled_header)]
        return args

    def cmodule_key(self) -> Any:
        self._keying = True
        try:
            return super().cmodule_key()
        finally:
            self._keying = False

    def _make_thunk(
        self, input_storage: Any = None, output_storage: Any = None, storage_map: Any = None
    ) -> Any:
        try:
            whole, inputs, outputs = CLinker.make_thunk(
                self, input_storage, output_storage, storage_map
            )
        except (MethodNotDefined, NotImplementedError):
            logger.debug("an op has no C code: this function is linked per op")
            return self._per_op(input_storage, output_storage, storage_map)
        guarded = _Guarded(whole, inputs, outputs, lambda: self._per_op(None, None, None))
        return guarded, inputs, outputs

    def _per_op(self, input_storage: Any, output_storage: Any, storage_map: Any) -> Any:
        per_op = VMLinker(use_cloop=True, c_thunks=True)
        per_op = per_op.accept(self.fgraph, no_recycling=self.no_recycling)
        return per_op.make_thunk(
            input_storage=input_storage, output_storage=output_storage, storage_map=storage_map
        )


def _cell(container: Any) -> list:
    """The one-element list a PyTensor Container keeps its value in."""
    return container.storage if isinstance(container, Container) else container


class _Guarded:
    """A whole-function thunk that, the first time it raises, hands over for good to the
    same function linked per op (its own storage, fed from and copied back to the whole
    function's), and runs that instead. Some ops' C code misbehaves inside one module
    (IncSubtensor with a scalar index raises a NumPy casting error); an error the function
    really raises is raised again per op."""

    def __init__(self, whole: Any, inputs: list, outputs: list, make_per_op: Any):
        self._whole, self._make_per_op, self._per_op = whole, make_per_op, None
        self._inputs = [_cell(container) for container in inputs]
        self._outputs = [_cell(container) for container in outputs]
        self.nodes = getattr(whole, "nodes", None)

    def __call__(self) -> None:
        if self._per_op is None:
            try:
                self._whole()
                return
            except Exception:
                logger.debug("a whole-function thunk raised: linked per op from now on")
                thunk, inputs, outputs = self._make_per_op()
                self._per_op = thunk, [_cell(c) for c in inputs], [_cell(c) for c in outputs]
        thunk, inputs, outputs = self._per_op
        for mine, theirs in zip(self._inputs, inputs, strict=True):
            theirs[0] = mine[0]
        thunk()
        for mine, theirs in zip(self._outputs, outputs, strict=True):
            mine[0] = theirs[0]


@contextlib.contextmanager
def compiling_with(compile_mode: str) -> Iterator[None]:
    """Every PyTensor function compiled inside (PyMC's included) uses the judge's mode."""
    with pytensor.config.change_flags(mode=judge_mode(compile_mode)):
        yield


def judge_mode(compile_mode: str) -> Mode:
    """The PyTensor mode phase 2 compiles with. The first whole-function mode in a process
    prepares the precompiled header for PyTensor's compile dir."""
    global _prepared_for
    if compile_mode == "per_op":
        return Mode(
            linker=PerOpLinker(use_cloop=True, c_thunks=True), optimizer=pytensor.config.optimizer
        )
    if compile_mode != "whole_function":
        raise ValueError(f"judge.compile must be one of {COMPILE_MODES}, got {compile_mode!r}")
    compile_dir = Path(pytensor.config.compiledir)
    if _prepared_for != compile_dir:
        _prepared_for = compile_dir
        prepare_precompiled_header(compile_dir)
    return Mode(linker=WholeFunctionLinker(), optimizer=pytensor.config.optimizer)


def prepare_precompiled_header(compile_dir: Path) -> bool:
    """Builds the common headers' precompiled header in `compile_dir` (once) and uses it
    if g++ accepts it for a module compiled with the judge's flags. True if it is used."""
    global _precompiled_header
    from pytensor.link.c.cmodule import GCC_compiler

    _precompiled_header = None
    folder = compile_dir / "synthstats-pch"
    header = folder / "judge_headers.h"
    flags = _module_flags(GCC_compiler.compile_args())
    includes = [f"-I{path}" for path in _include_dirs()]
    if not (folder / "judge_headers.h.gch").exists():
        folder.mkdir(parents=True, exist_ok=True)
        header.write_text("".join(f"#include <{name}>\n" for name in _COMMON_HEADERS))
        built = _run([*flags, *includes, "-x", "c++-header", "-o", f"{header}.gch", str(header)])
        if not built:
            return False
    probe = folder / "probe.cpp"
    probe.write_text("#include <Python.h>\nint probe(void) { return 0; }\n")
    check = [*flags, *includes, "-Winvalid-pch", "-Werror", "-include", str(header)]
    if not _run([*check, "-fsyntax-only", str(probe)]):
        logger.warning("the precompiled header is not valid for this compiler: not used")
        return False
    _precompiled_header = header
    return True


def _module_flags(compiler_args: list[str]) -> list[str]:
    """The flags of a module compile that a precompiled header must share."""
    head = ["-fno-math-errno", "-Wno-unused-label", "-Wno-unused-variable", "-Wno-write-strings"]
    return [pytensor.config.cxx, "-g", *head, *compiler_args, *_OPTIMISATION, "-fvisibility=hidden"]


def _include_dirs() -> list[str]:
    import numpy
    import pytensor.link.c.c_code as c_code

    return [numpy.get_include(), sysconfig.get_path("include"), c_code.__path__[0]]


def _run(command: list[str]) -> bool:
    try:
        result = subprocess.run(command, capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    if result.returncode:
        logger.debug("%s failed: %s", command[0], result.stderr.decode(errors="replace")[-2000:])
    return result.returncode == 0
