"""The ops phase 2 rebuilds, each from its class name and plain props only.

Nothing in a model description names code: phase 2 looks every op class up here and builds
the op itself (a canonical instance, or the class called with validated plain props), then
checks that the op it built describes back to exactly the props it was given, so a
non-canonical prop (an in-place pattern, an unknown dtype) is refused rather than dropped.
The ops are those the shipped references, demonstrations and program spaces need, plus a
few plain shape and reduction ops; random variables are PyMC's built-in distributions.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import pymc.distributions as distributions
import pytensor
import pytensor.scalar as ps
import pytensor.scalar.math as scalar_math
from pymc.distributions import transforms
from pymc.distributions.distribution import SymbolicRandomVariable
from pytensor.scalar.basic import Composite, ScalarOp
from pytensor.scan.op import Scan, ScanInfo
from pytensor.tensor.basic import Alloc, AllocEmpty, Join, MakeVector, ScalarFromTensor
from pytensor.tensor.elemwise import DimShuffle, Elemwise
from pytensor.tensor.extra_ops import CumOp
from pytensor.tensor.math import Dot, Max, Min, Prod, Sum
from pytensor.tensor.random.op import RandomVariable
from pytensor.tensor.shape import Reshape, Shape, SpecifyShape
from pytensor.tensor.subtensor import (
    AdvancedSubtensor,
    AdvancedSubtensor1,
    IncSubtensor,
    Subtensor,
)

from synthstats.judge.describe import describe_prop, op_class, scalar_op_key
from synthstats.judge.score import Failure

DTYPES = frozenset(
    {"float64", "float32", "int64", "int32", "int16", "int8", "uint64", "uint32"}
    | {"uint16", "uint8", "bool"}
)
_MAX_INT = 1 << 31
# PyMC's SymbolicRandomVariables with scalar parameters, rebuilt as rv_op(*params, size, rng).
_SYMBOLIC_SIGNATURE = re.compile(r"^\[rng\],\[size\],(\(\),)*\(\)->\[rng\],\(\)$")


class Forbidden(Failure):
    def __init__(self, message: str):
        super().__init__("forbidden_model", message)


def check_int(value: Any, what: str) -> int:
    if type(value) is not int or abs(value) >= _MAX_INT:
        raise Forbidden(f"{what} must be a small integer, got {value!r}")
    return value


def check_dtype(value: Any, what: str = "dtype") -> str:
    if value not in DTYPES:
        raise Forbidden(f"{what} {value!r} is not an allowed dtype")
    return value


@functools.cache
def scalar_ops() -> dict[str, ScalarOp]:
    """Every module-level scalar op instance of PyTensor, by scalar_op_key; a key shared by
    two different instances is left out (it would not say which one)."""
    table: dict[str, ScalarOp] = {}
    ambiguous: set[str] = set()
    for module in (ps.basic, scalar_math):
        for value in vars(module).values():
            if not isinstance(value, ScalarOp) or isinstance(value, Composite):
                continue
            key = scalar_op_key(value)
            if key in table and table[key] != value:
                ambiguous.add(key)
            table[key] = value
    return {key: op for key, op in table.items() if key not in ambiguous}


@functools.cache
def random_variables() -> dict[str, RandomVariable]:
    """The rv_op of every built-in PyMC distribution, by class and props."""
    table = {}
    for name in distributions.__all__:
        op = getattr(getattr(distributions, name, None), "rv_op", None)
        if isinstance(op, RandomVariable) and not isinstance(op, SymbolicRandomVariable):
            if op.dtype == "floatX":  # PyMC's nodes carry the resolved dtype
                op = type(op)(**{**op._props_dict(), "dtype": pytensor.config.floatX})
            table[rv_key(op_class(op), _props_of(op))] = op
    return table


@functools.cache
def symbolic_random_variables() -> dict[str, type]:
    """SymbolicRandomVariable class name -> its PyMC distribution class."""
    table = {}
    for name in distributions.__all__:
        distribution = getattr(distributions, name, None)
        rv_type = getattr(distribution, "rv_type", None)
        if (
            isinstance(rv_type, type)
            and issubclass(rv_type, SymbolicRandomVariable)
            and _SYMBOLIC_SIGNATURE.match(getattr(rv_type, "extended_signature", None) or "")
        ):
            table[f"{rv_type.__module__}.{rv_type.__qualname__}"] = distribution
    return table


def named_transforms() -> dict[str, Any]:
    """Transforms a program may ask for by name (the default one is always allowed)."""
    singletons = (
        transforms.log,
        transforms.logodds,
        transforms.log_exp_m1,
        transforms.ordered,
        transforms.sum_to_1,
        transforms.circular,
        transforms.simplex,
    )
    return {op_class(transform): transform for transform in singletons}


def rv_key(name: str, props: dict[str, Any]) -> str:
    return f"{name}{sorted(props.items())!r}"


def _props_of(op: Any) -> dict[str, Any]:
    return {prop: describe_prop(getattr(op, prop)) for prop in getattr(op, "__props__", ())}


def _scalar_type(value: Any) -> Any:
    if not isinstance(value, dict) or set(value) != {"scalar_type"}:
        raise Forbidden(f"index entry {value!r} is not a scalar type")
    return ps.get_scalar_type(check_dtype(value["scalar_type"]))


def _index_entry(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"slice"}:
        parts = value["slice"]
        if not isinstance(parts, list) or len(parts) != 3:
            raise Forbidden("a slice must have three parts")
        return slice(*(None if part is None else _scalar_type(part) for part in parts))
    return _scalar_type(value)


def _index_list(value: Any) -> tuple:
    if not isinstance(value, list) or len(value) > 32:
        raise Forbidden("idx_list must be a short list")
    return tuple(_index_entry(entry) for entry in value)


def _axis(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > 32:
        raise Forbidden("axis must be null or a short list of integers")
    return tuple(check_int(axis, "axis") for axis in value)


def _elemwise(props: dict[str, Any]) -> Elemwise:
    scalar = props.get("scalar_op")
    key = scalar.get("scalar_op") if isinstance(scalar, dict) else None
    op = scalar_ops().get(key) if isinstance(key, str) else None
    if op is None:
        raise Forbidden(f"elementwise op {key!r} is not an allowed scalar op")
    return Elemwise(op)


def _dimshuffle(props: dict[str, Any]) -> DimShuffle:
    order = props.get("new_order")
    if not isinstance(order, list) or len(order) > 32:
        raise Forbidden("DimShuffle new_order must be a short list")
    entries = tuple(entry if entry == "x" else check_int(entry, "new_order") for entry in order)
    return DimShuffle(
        input_ndim=check_int(props.get("input_ndim"), "input_ndim"), new_order=entries
    )


def _reduction(cls: type) -> Callable[[dict[str, Any]], Any]:
    def build(props: dict[str, Any]) -> Any:
        axis = _axis(props.get("axis"))
        if cls in (Max, Min):
            return cls(axis=axis)
        dtype, acc = props.get("dtype"), props.get("acc_dtype")
        return cls(
            axis=axis,
            dtype=None if dtype is None else check_dtype(dtype),
            acc_dtype=None if acc is None else check_dtype(acc),
        )

    return build


def _inc_subtensor(props: dict[str, Any]) -> IncSubtensor:
    if props.get("inplace") is not False:
        raise Forbidden("in-place IncSubtensor is not allowed")
    setting = props.get("set_instead_of_inc")
    if not isinstance(setting, bool):
        raise Forbidden("IncSubtensor set_instead_of_inc must be true or false")
    return IncSubtensor(_index_list(props.get("idx_list")), set_instead_of_inc=setting)


def _cumop(props: dict[str, Any]) -> CumOp:
    mode = props.get("mode")
    if mode not in ("add", "mul"):
        raise Forbidden(f"CumOp mode {mode!r} is not add or mul")
    return CumOp(axis=check_int(props.get("axis"), "axis"), mode=mode)


def _plain(cls: type) -> Callable[[dict[str, Any]], Any]:
    return lambda props: cls()


# Op class name -> builder from validated plain props. Scan and the random variables are
# rebuilt separately (rebuild.py): they take inner graphs and the distribution tables.
BUILDERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    f"{cls.__module__}.{cls.__qualname__}": builder
    for cls, builder in [
        (Elemwise, _elemwise),
        (DimShuffle, _dimshuffle),
        (Sum, _reduction(Sum)),
        (Prod, _reduction(Prod)),
        (Max, _reduction(Max)),
        (Min, _reduction(Min)),
        (Dot, _plain(Dot)),
        (Join, _plain(Join)),
        (Shape, _plain(Shape)),
        (ScalarFromTensor, _plain(ScalarFromTensor)),
        (Alloc, _plain(Alloc)),
        (SpecifyShape, _plain(SpecifyShape)),
        (AdvancedSubtensor, _plain(AdvancedSubtensor)),
        (AdvancedSubtensor1, _plain(AdvancedSubtensor1)),
        (MakeVector, lambda props: MakeVector(check_dtype(props.get("dtype")))),
        (AllocEmpty, lambda props: AllocEmpty(check_dtype(props.get("dtype")))),
        (Reshape, lambda props: Reshape(check_int(props.get("ndim"), "ndim"))),
        (Subtensor, lambda props: Subtensor(_index_list(props.get("idx_list")))),
        (IncSubtensor, _inc_subtensor),
        (CumOp, _cumop),
    ]
}
SCAN = f"{Scan.__module__}.{Scan.__qualname__}"


def build_op(description: Any) -> Any:
    """The op a plain op description stands for; Forbidden unless it is allowed and its
    props are exactly the canonical props of the op built from them."""
    if not isinstance(description, dict) or not isinstance(description.get("class"), str):
        raise Forbidden("an op must be described by its class name")
    name, props = description["class"], description.get("props", {})
    if not isinstance(props, dict):
        raise Forbidden(f"props of {name} must be a mapping")
    if name in BUILDERS:
        op = BUILDERS[name](props)
        if _props_of(op) != props:
            raise Forbidden(f"{name} with non-canonical props {_short(props)}")
        return op
    if (op := random_variables().get(rv_key(name, props))) is not None:
        return op
    raise Forbidden(f"op {_short(name)} is not allowed{_hint(name)}")


def scan_info(value: Any) -> ScanInfo:
    """A ScanInfo from plain fields, each checked for its shape."""
    if not isinstance(value, dict) or set(value) != set(ScanInfo.__dataclass_fields__):
        raise Forbidden("Scan info must name exactly ScanInfo's fields")
    fields = {}
    for key, entry in value.items():
        if key == "as_while":
            if not isinstance(entry, bool):
                raise Forbidden("Scan as_while must be true or false")
            fields[key] = entry
        elif key.endswith("_slices"):
            if not isinstance(entry, list) or len(entry) > 64:
                raise Forbidden(f"Scan {key} must be a short list")
            fields[key] = tuple(
                tuple(check_int(tap, key) for tap in taps)
                if isinstance(taps, list) and len(taps) <= 64
                else _raise(f"Scan {key} must hold lists of taps")
                for taps in entry
            )
        else:
            fields[key] = check_int(entry, f"Scan {key}")
    return ScanInfo(**fields)


def _raise(message: str) -> Any:
    raise Forbidden(message)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _hint(name: str) -> str:
    if "CustomDist" in name or "DensityDist" in name or "CustomSymbolicDist" in name:
        return " (pm.CustomDist/DensityDist: use a built-in distribution)"
    if "Minibatch" in name:
        return " (total_size scales the likelihood: remove it)"
    if "FromFunctionOp" in name or "as_op" in name:
        return " (Python callback ops cannot be rebuilt)"
    if name.startswith("pymc."):
        return " (this PyMC distribution or op is not supported by the judge)"
    return ""
