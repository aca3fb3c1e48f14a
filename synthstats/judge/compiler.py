"""How phase 2 compiles a model's functions: one C module per new structure, built cheaply.

PyTensor's default linker compiles one C module per distinct op, and a new model structure
brings a dozen of them (fused elementwise code unique to the model), each a g++ run that
spends most of its time parsing the same Python and NumPy headers at -O3, for every
function PyMC compiles: the sampler's log density and gradient, but also the initial
point, the trace's point function, the prior draws and the pointwise log-likelihood. Only
the first is called tens of thousands of times. So instead:

- the sampler's functions (`hot_mode`, given to pm.sample) are each one C module
  (PyTensor's `c` linker): one g++ run, not a dozen, and a faster call (no per-op
  dispatch), at -O1 without debug information, with the headers every module includes
  precompiled once per compile directory (a GCC precompiled header, checked before use);
- every other function (`compiling_with`'s default) runs its ops' Python code, compiling
  nothing: called a few thousand times at most, it costs less than one g++ run. Without
  elementwise fusion, whose fused ops would run element by element in Python.

A function with an op that has no C code is linked per op instead. Some ops' C code uses
an input's Python object, which one module only has for tensors: see
`_one_module_c_code`.
Which a judge uses is `judge.compile` (`whole_function`, the default; `per_op`,
PyTensor's own linker for every function, kept so `synthstats bench judge-compile` can
measure one against the other in the same run). Phase 1 never compiles and cannot write
the compile dir (confine.py), so the precompiled header, like the modules, holds only what
phase 2 built.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import subprocess
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytensor
from pytensor.compile.mode import OPT_FAST_RUN, Mode
from pytensor.graph.utils import MethodNotDefined
from pytensor.link.c.basic import CLinker
from pytensor.link.c.op import CLinkerOp
from pytensor.link.vm import VMLinker
from pytensor.tensor.type import TensorType

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
# The mark keeps modules compiled with `_one_module_c_code` apart in the cache from any
# compiled without it.
_JUDGE_FLAGS = ["-O1", "-g0", "-DSYNTHSTATS_TENSOR_OBJECTS_FROM_C_VARIABLES"]

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
        args += _JUDGE_FLAGS
        if _precompiled_header is not None and not self._keying:
            args += ["-include", str(_precompiled_header)]
        return args

    def cmodule_key(self) -> Any:
        self._keying = True
        try:
            return super().cmodule_key()
        finally:
            self._keying = False

    def code_gen(self) -> Any:
        with _tensor_objects_from_c_variables(self.fgraph):
            return super().code_gen()

    def _make_thunk(
        self, input_storage: Any = None, output_storage: Any = None, storage_map: Any = None
    ) -> Any:
        if _needs_python_objects_of_computed_scalars(self.fgraph):
            logger.debug("an op's C code needs a Python object one module lacks: linked per op")
            return self._per_op(input_storage, output_storage, storage_map)
        try:
            return CLinker.make_thunk(self, input_storage, output_storage, storage_map)
        except (MethodNotDefined, NotImplementedError):
            logger.debug("an op has no C code: this function is linked per op")
            return self._per_op(input_storage, output_storage, storage_map)

    def _per_op(self, input_storage: Any, output_storage: Any, storage_map: Any) -> Any:
        per_op = VMLinker(use_cloop=True, c_thunks=True)
        per_op = per_op.accept(self.fgraph, no_recycling=self.no_recycling)
        return per_op.make_thunk(
            input_storage=input_storage, output_storage=output_storage, storage_map=storage_map
        )


# Some ops' C code uses the Python object of an input (`py_<name>`): Subtensor's view takes
# `py_x` as its base, IncSubtensor copies from it. Linked per op every input comes from
# Python, so `py_x` is set; in one module a value the function computes lives as a C
# variable alone and its `py_` slot holds None (the op aborts on an assertion or reads
# None). A tensor's C variable IS its Python object (a PyArrayObject*), so in one module
# the op's code is given that instead; a computed scalar's is a C number, and a function
# with such code is linked per op.


def _one_module_c_code(op: Any, node: Any, name: str, inputs: list, outputs: list, sub: dict):
    code = type(op).c_code(op, node, name, inputs, outputs, sub)
    for variable, symbol in zip([*node.inputs, *node.outputs], [*inputs, *outputs], strict=True):
        if variable.owner is not None and isinstance(variable.type, TensorType):
            code = re.sub(rf"\bpy_{symbol}\b", f"((PyObject*){symbol})", code)
    return code


@contextlib.contextmanager
def _tensor_objects_from_c_variables(fgraph: Any) -> Iterator[None]:
    ops = {id(node.op): node.op for node in fgraph.apply_nodes if isinstance(node.op, CLinkerOp)}
    for op in ops.values():
        object.__setattr__(op, "c_code", functools.partial(_one_module_c_code, op))
    try:
        yield
    finally:
        for op in ops.values():
            object.__delattr__(op, "c_code")


def _needs_python_objects_of_computed_scalars(fgraph: Any) -> bool:
    """Whether, after the tensor rewrite, an op's C code in this function still uses the
    Python object of a value the function computes (a scalar's, or one this check cannot
    generate code for)."""
    for node in fgraph.toposort():
        if not isinstance(node.op, CLinkerOp):
            continue  # CLinker refuses the function: it is linked per op anyway
        symbols: dict[Any, str] = {}  # one name per variable, as CLinker names them
        for variable in [*node.inputs, *node.outputs]:
            symbols.setdefault(variable, f"synthstats_v{len(symbols)}")
        inputs = [symbols[variable] for variable in node.inputs]
        outputs = [symbols[variable] for variable in node.outputs]
        sub = {"failure_var": "__failure", "id": 0, "fail": "{}", "params": "__params"}
        try:
            code = _one_module_c_code(node.op, node, "synthstats_node", inputs, outputs, sub)
        except (MethodNotDefined, NotImplementedError):
            continue
        except Exception:
            return True  # code this check cannot generate is not trusted to one module
        for variable, symbol in symbols.items():
            if variable.owner is not None and re.search(rf"\bpy_{symbol}\b", code):
                return True
    return False


@contextlib.contextmanager
def compiling_with(compile_mode: str) -> Iterator[None]:
    """Every PyTensor function compiled inside (PyMC's included) that is not given a mode
    uses the judge's mode for functions called a few times. Graph nodes made inside record
    no creation stack: phase 2 builds from a description, so there is no program line to
    point at, and walking the stack for every node costs a few percent of a program."""
    with pytensor.config.change_flags(mode=few_calls_mode(compile_mode), traceback__limit=0):
        yield


def few_calls_mode(compile_mode: str) -> Mode:
    """The mode of functions called a few thousand times at most: Python, or per op."""
    if compile_mode == "whole_function":
        return Mode(
            linker=VMLinker(use_cloop=False, c_thunks=False),
            optimizer=OPT_FAST_RUN.excluding("fusion"),
        )
    return hot_mode(compile_mode)


def hot_mode(compile_mode: str) -> Mode:
    """The mode of the sampler's functions. The first whole-function mode in a process
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
    """Uses the common headers' precompiled header in `compile_dir` if g++ accepts it for
    a module compiled with the judge's flags, building it when it is missing or refused
    (another compiler, other flags, a damaged file). True if it is used."""
    global _precompiled_header
    _precompiled_header = None
    header = compile_dir / "synthstats-pch" / "judge_headers.h"
    if not (_accepted(header) or (_build(header) and _accepted(header))):
        logger.warning("g++ refuses the precompiled header: modules compile without it")
        return False
    _precompiled_header = header
    return True


def _build(header: Path) -> bool:
    """Builds the precompiled header next to `header`; a file of its own first, renamed
    into place, so workers sharing a compile dir never read a half-written one."""
    header.parent.mkdir(parents=True, exist_ok=True)
    header.write_text("".join(f"#include <{name}>\n" for name in _COMMON_HEADERS))
    building = header.parent / f"judge_headers.h.gch.{os.getpid()}"
    command = [*_pch_flags(), "-x", "c++-header", "-o", str(building), str(header)]
    if not _run(command):
        building.unlink(missing_ok=True)
        return False
    building.replace(f"{header}.gch")
    return True


def _accepted(header: Path) -> bool:
    if not Path(f"{header}.gch").exists():
        return False
    probe = header.parent / f"probe.{os.getpid()}.cpp"
    probe.write_text("#include <Python.h>\nint probe(void) { return 0; }\n")
    try:
        check = ["-Winvalid-pch", "-Werror", "-include", str(header), "-fsyntax-only"]
        return _run([*_pch_flags(), *check, str(probe)])
    finally:
        probe.unlink(missing_ok=True)


def _pch_flags() -> list[str]:
    from pytensor.link.c.cmodule import GCC_compiler

    includes = [f"-I{path}" for path in _include_dirs()]
    return [*_module_flags(GCC_compiler.compile_args()), *includes]


def _module_flags(compiler_args: list[str]) -> list[str]:
    """The flags of a module compile that a precompiled header must share."""
    head = ["-fno-math-errno", "-Wno-unused-label", "-Wno-unused-variable", "-Wno-write-strings"]
    return [pytensor.config.cxx, "-g", *head, *compiler_args, *_JUDGE_FLAGS, "-fvisibility=hidden"]


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
