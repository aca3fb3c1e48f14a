"""The static gate: refuse, before anything runs, programs that reach beyond model building.

An allowlist of imports, no private or dunder attributes, no builtins that open files or
reach objects by computed names, no attribute names that lead from an allowed module to
the OS (`pytensor.configdefaults.os.environ`), to files (`numpy.save`) or to the C compiler
(`pytensor.config.cxx`, an Op's `c_code`), and no attribute assignment outside `self.x`
(a program that patched `pm.sampling.mcmc.init_nuts` would forge its own score). Also no
frame, code, generator, coroutine or traceback attributes (`gen.gi_frame.f_back` reaches
the judge's own frames), no `type` (three arguments build a class from computed attribute
names), no shell, pickle or file functions reachable through allowed modules
(`pytensor.utils.output_subprocess_Popen`, `pm.parallel.cloudpickle.loads`,
`pm.data.pd.read_csv`), and no item assignment into a module's attributes
(`pm.backends.arviz.rcParams[...] = ...`). Defence in depth: what the gate cannot see, the
sandbox contains.
"""

from __future__ import annotations

import ast
import re
import string

from synthstats.judge.score import ErrorKind

ALLOWED_MODULES = frozenset(
    {
        "pymc",
        "pymc.math",
        "numpy",
        "pytensor",
        "pytensor.tensor",
        "math",
        "scipy.special",
        "scipy.stats",
    }
)

FORBIDDEN_NAMES = frozenset(
    {
        "eval",
        "exec",
        "compile",
        "open",
        "__import__",
        "getattr",
        "setattr",
        "delattr",
        "globals",
        "vars",
        "locals",
        "input",
        "breakpoint",
        "help",
        "exit",
        "quit",
        "memoryview",
        "type",  # type(name, bases, namespace) builds a class from computed attribute names
    }
)

# Attribute names that lead out of model building, whatever object they are read from.
FORBIDDEN_ATTRIBUTES = frozenset(
    {
        # modules reachable as attributes of allowed modules
        *("os", "sys", "subprocess", "shutil", "socket", "pathlib", "io", "builtins"),
        *("importlib", "ctypes", "pickle", "marshal", "signal", "threading", "tempfile"),
        *("multiprocessing", "glob", "platform", "resource", "mmap", "pty", "code"),
        *("codeop", "inspect", "gc", "logging", "urllib", "http", "asyncio", "select"),
        *("selectors", "fcntl", "posix", "zipfile", "tarfile", "sqlite3", "webbrowser"),
        *("runpy", "types", "operator", "concurrent", "jax", "datasets"),
        # code objects and computed attribute access
        *("CodeType", "FunctionType", "attrgetter", "methodcaller", "format_map"),
        # the environment and processes
        *("environ", "getenv", "putenv", "system", "popen", "fork", "spawnv", "execv"),
        # files
        *("open", "save", "savez", "savez_compressed", "savetxt", "load", "loadtxt"),
        *("genfromtxt", "fromfile", "tofile", "fromregex", "memmap", "open_memmap"),
        *("DataSource", "dump", "dumps", "to_netcdf", "to_zarr", "to_json", "to_csv"),
        *("to_pickle", "savefig", "write", "writelines", "ctypeslib", "f2py", "lib"),
        *("distutils", "testing"),
        # PyTensor's compiler, its settings and its file-writing printers
        *("config", "configdefaults", "configparser", "link", "compile", "COp"),
        *("ExternalCOp", "printing", "pydotprint", "d3viz"),
        # shell, pickle and file functions reachable through allowed modules
        *("utils", "function_dump", "cloudpickle", "dill", "joblib", "loads", "unpickle"),
        *("pd", "pandas", "xr", "xarray", "az", "arviz", "h5py", "netCDF4", "zarr"),
        *("from_netcdf", "from_zarr", "from_json", "backends", "parallel", "fromstring"),
        *("frombuffer", "as_op", "rcParams", "rcparams", "rc_context", "set_options"),
        # what tracebacks and closures hold (frames: the family below)
        *("with_traceback", "cell_contents"),
    }
)

# Attribute-name families: frame (f_), code (co_), generator (gi_), coroutine (cr_), async
# generator (ag_) and traceback (tb_) internals, pandas/xarray/numpy readers, subprocess
# wrappers (pytensor.utils.output_subprocess_Popen).
_FORBIDDEN_ATTRIBUTE = re.compile(
    r"^(f|co|gi|cr|ag|tb)_|^read_|^open_|^load_|^to_|Popen|subprocess|pickle"
)

# PyTensor's hooks for C code: an Op that defines them gets its C compiled and run.
_C_HOOK = re.compile(
    r"^c_(code|support_code|header|lib|compile_args|no_compile_args|init_code|cleanup"
    r"|declare|extract|sync|element_type|literal|is_simple)"
)

GateVerdict = tuple[ErrorKind, str]


def check_program(source: str) -> GateVerdict | None:
    """(error kind, message) if the program must not run, else None."""
    try:
        tree = ast.parse(source, filename="<program>")
    except SyntaxError as error:
        return "syntax", f"line {error.lineno}: {error.msg}"
    except (ValueError, RecursionError, MemoryError) as error:
        return "syntax", f"cannot parse: {type(error).__name__}"
    for node in ast.walk(tree):  # iterative: a deeply nested program cannot overflow us
        problem = _problem(node)
        if problem:
            return "forbidden", f"line {getattr(node, 'lineno', '?')}: {problem}"
    return None


def import_allowed(module: str, names: tuple[str, ...] = ()) -> bool:
    """Whether `import module` / `from module import names` passes (also used at runtime)."""
    if module not in ALLOWED_MODULES and not all(
        f"{module}.{name}" in ALLOWED_MODULES for name in names or ("",)
    ):
        return False
    return all(name != "*" and attribute_allowed(name) for name in names)


def _problem(node: ast.AST) -> str | None:
    if isinstance(node, ast.Import):
        for alias in node.names:
            if not import_allowed(alias.name):
                return f"import of {alias.name!r} is not allowed ({_allowed_list()})"
    elif isinstance(node, ast.ImportFrom):
        names = tuple(alias.name for alias in node.names)
        if node.level or not node.module or not import_allowed(node.module, names):
            return f"from {node.module!r} import {', '.join(names)} is not allowed"
    elif isinstance(node, ast.Attribute):
        if not attribute_allowed(node.attr):
            return f"attribute {node.attr!r} is not allowed"
        if _C_HOOK.match(node.attr):
            return f"attribute {node.attr!r} is a C-code hook"
        if node.attr == "format" and not _safe_format_template(node.value):
            return "str.format with a computed template or attribute/index fields"
        if not isinstance(node.ctx, ast.Load) and not _on_self(node):
            return "setting attributes other than self.x could alter the judge's own modules"
    elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _C_HOOK.match(node.name):
        return f"defining {node.name!r} would compile C code"
    elif isinstance(node, ast.Constant) and isinstance(node.value, str):
        if _C_HOOK.match(node.value):
            return f"the string {node.value!r} names a C-code hook"
    elif isinstance(node, ast.Name):
        if node.id in FORBIDDEN_NAMES or node.id.startswith("__"):
            return f"name {node.id!r} is not allowed"
        if _C_HOOK.match(node.id):  # `c_code = ...` in a class body defines the hook
            return f"name {node.id!r} is a C-code hook"
    elif isinstance(node, ast.keyword) and node.arg and _C_HOOK.match(node.arg):
        return f"keyword {node.arg!r} is a C-code hook"
    elif isinstance(node, ast.Subscript) and not isinstance(node.ctx, ast.Load):
        if not _local_container(node.value):
            return "item assignment into an attribute could alter the judge's own modules"
    elif isinstance(node, ast.MatchClass):
        for attribute in node.kwd_attrs:
            if not attribute_allowed(attribute):
                return f"pattern attribute {attribute!r} is not allowed"
    return None


def _on_self(node: ast.Attribute) -> bool:
    """self.x = ... inside a class the program defines, and nothing deeper."""
    return isinstance(node.value, ast.Name) and node.value.id == "self"


def _local_container(node: ast.expr) -> bool:
    """x[i] = ..., self.x[i] = ... or x[i][j] = ...: a container the program made."""
    while isinstance(node, ast.Subscript):
        node = node.value
    return isinstance(node, ast.Name) or (isinstance(node, ast.Attribute) and _on_self(node))


def attribute_allowed(name: str) -> bool:
    """Whether `x.name` passes, whatever x is (also used at runtime)."""
    return (
        not name.startswith("_")
        and name not in FORBIDDEN_ATTRIBUTES
        and not _FORBIDDEN_ATTRIBUTE.search(name)
    )


def _safe_format_template(template: ast.expr) -> bool:
    """'{0.__class__}'.format(x) reads attributes through a string the AST cannot see."""
    if not (isinstance(template, ast.Constant) and isinstance(template.value, str)):
        return False
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template.value)]
    except ValueError:
        return False
    return not any(field and ("." in field or "[" in field) for field in fields)


def _allowed_list() -> str:
    return "allowed: " + ", ".join(sorted(ALLOWED_MODULES))
