"""Phase 1 of scoring: a program's model as plain data, its only output.

The program runs in a contained child; this module, in that same child, turns the model it
bound to `model` into a *model description*: versioned JSON (never pickle) of the model's
graph (`fgraph_from_model`), each node an op named by class plus its props in plain
values, constants as flat arrays, the observed values replaced by the env's name for them.
Nothing here is trusted: a program can patch this module or forge its output, so phase 2
(`synthstats.judge.rebuild`) validates every field and rebuilds the model itself. What this
module adds is early, well-worded refusals for programs that are not forging anything.

Layout (version 1):
  {"version": 1,
   "variables": [{"kind": ..., "type": TYPE, ...}, ...],   # referenced by index
   "nodes": [{"op": OP, "inputs": [index, ...], "outputs": [index, ...]}, ...],
   "outputs": [index, ...],                                 # the model variables, in order
   "coords": {dim: [value, ...] | null}, "dim_lengths": {dim: index}}
  kinds: "constant" (data), "shared" (data, a pm.Data or dim length), "rng", "input" (a
  free variable's value), "observed" (env_name: phase 2 attaches the env's array), "none",
  "output" (made by a node), and, inside a Scan, "inner" (one of its inner inputs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pymc as pm
from pymc.model.fgraph import ModelNamed, ModelObservedRV, ModelPotential, fgraph_from_model
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.basic import Constant, Variable
from pytensor.graph.fg import FunctionGraph
from pytensor.graph.null_type import NullType
from pytensor.tensor.random.type import RandomType
from pytensor.tensor.type import TensorType
from pytensor.tensor.type_other import NoneTypeT, SliceType

from synthstats.judge.score import Failure

VERSION = 1
# Refused as `forbidden_model` before phase 2: a bigger model cannot be sampled in budget.
MAX_NODES = 20_000
MAX_CONSTANT_VALUES = 1_000_000


def describe_model(model: Any, observed: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The model description of `model`, whose observed variables must hold the env's
    observed arrays (`observed`, by env name); raises Failure otherwise."""
    if type(model) is not pm.Model:
        raise Failure(
            "forbidden_model",
            f"`model` is a {type(model).__module__}.{type(model).__qualname__}, a pm.Model "
            "subclass; build a plain pm.Model",
        )
    holders = _observed_holders(model, observed)
    # Starting values are the sampler's business, not the model's: the judge starts every
    # program from PyMC's default initial point.
    for rv in model.rvs_to_initial_values:
        model.rvs_to_initial_values[rv] = None
    try:
        fgraph, _ = fgraph_from_model(model)
    except (NotImplementedError, ValueError) as error:
        raise Failure("forbidden_model", f"the model cannot be described: {error}") from None
    for node in fgraph.apply_nodes:
        if isinstance(node.op, ModelPotential):
            raise Failure(
                "forbidden_model",
                f"pm.Potential {node.outputs[0].name!r}: potentials are not allowed; "
                "every term of the model must be a built-in distribution",
            )
    writer = _Writer(_observed_in_graph(fgraph, holders))
    description = writer.graph(fgraph)
    description["version"] = VERSION
    description["coords"] = {
        str(name): None if values is None else [_plain(value) for value in values]
        for name, values in model.coords.items()
    }
    description["dim_lengths"] = {
        str(name): writer.index(length)
        for name, length in getattr(fgraph, "_dim_lengths", {}).items()
        if isinstance(length, Variable) and length in writer.ids
    }
    return description


def _observed_in_graph(fgraph: FunctionGraph, holders: dict[str, str]) -> dict[int, str]:
    """id of each observed value variable in the graph (behind pm.Data's ModelNamed
    wrapper) -> the env name of the array it holds."""
    found = {}
    for node in fgraph.apply_nodes:
        if isinstance(node.op, ModelObservedRV) and node.outputs[0].name in holders:
            value = node.inputs[1]
            if value.owner is not None and isinstance(value.owner.op, ModelNamed):
                value = value.owner.inputs[0]
            found[id(value)] = holders[node.outputs[0].name]
    return found


def _observed_holders(model: pm.Model, observed: Mapping[str, np.ndarray]) -> dict[str, str]:
    """The name of each observed variable -> the env name of the array it holds."""
    holders: dict[str, str] = {}
    taken: dict[str, str] = {}
    for rv in model.observed_RVs:
        value = model.rvs_to_values[rv]
        array = _array_of(value)
        names = [
            name
            for name, expected in observed.items()
            if array is not None
            and array.size == np.size(expected)
            and np.array_equal(array.ravel().astype(float), np.ravel(expected).astype(float))
        ]
        if not names:
            raise Failure(
                "data_mismatch",
                f"observed variable {rv.name!r} does not hold any of the env's observed "
                f"arrays exactly ({_spelled(observed)}); the env supplies the data",
            )
        if names[0] in taken:
            raise Failure(
                "data_mismatch",
                f"data[{names[0]!r}] is observed twice ({taken[names[0]]!r}, {rv.name!r})",
            )
        taken[names[0]] = rv.name
        holders[rv.name] = names[0]
    missing = [name for name in observed if name not in taken]
    if missing:
        raise Failure(
            "data_mismatch",
            f"no observed variable holds {_spelled(missing)}; "
            "pass it as observed= to the likelihood",
        )
    return holders


class _Writer:
    """Numbers the variables of a graph (and of its Scans' inner graphs) as it walks it."""

    def __init__(self, holders: dict[int, str]):
        self.holders = holders
        self.ids: dict[Variable, int] = {}
        self.variables: list[dict[str, Any]] = []
        self.values = 0

    def index(self, variable: Variable) -> int:
        return self.ids[variable]

    def graph(self, fgraph: FunctionGraph) -> dict[str, Any]:
        nodes = []
        for node in fgraph.toposort():
            if len(nodes) + len(self.variables) > MAX_NODES:
                raise Failure("forbidden_model", f"the model has over {MAX_NODES} graph nodes")
            inputs = [self._input(variable) for variable in node.inputs]
            op = describe_op(node.op, self)
            outputs = [self._add(variable, {"kind": "output"}) for variable in node.outputs]
            nodes.append({"op": op, "inputs": inputs, "outputs": outputs})
        return {
            "variables": self.variables,
            "nodes": nodes,
            "outputs": [self._input(variable) for variable in fgraph.outputs],
        }

    def inner_graph(self, fgraph: FunctionGraph) -> dict[str, Any]:
        """A Scan's inner graph, numbered in the same table but in a scope of its own."""
        outer, self.ids = self.ids, {}
        try:
            inputs = [self._add(variable, {"kind": "inner"}) for variable in fgraph.inputs]
            inner = self.graph(fgraph)
        finally:
            self.ids = outer
        return {
            "inner_inputs": inputs,
            "inner_nodes": inner["nodes"],
            "inner_outputs": inner["outputs"],
        }

    def _input(self, variable: Variable) -> int:
        if variable in self.ids:
            return self.ids[variable]
        if id(variable) in self.holders:
            entry = {"kind": "observed", "env_name": self.holders[id(variable)]}
            return self._add(variable, entry | {"shared": isinstance(variable, SharedVariable)})
        if isinstance(variable.type, NoneTypeT):
            return self._add(variable, {"kind": "none"})
        if isinstance(variable.type, RandomType):
            return self._add(variable, {"kind": "rng"})
        if isinstance(variable, Constant):
            return self._add(variable, {"kind": "constant", "data": self._data(variable.data)})
        if isinstance(variable, SharedVariable):
            value = variable.get_value(borrow=True)
            return self._add(variable, {"kind": "shared", "data": self._data(value)})
        return self._add(variable, {"kind": "input"})

    def _add(self, variable: Variable, entry: dict[str, Any]) -> int:
        entry["type"] = describe_type(variable.type)
        if variable.name is not None:
            entry["name"] = str(variable.name)
        self.ids[variable] = len(self.variables)
        self.variables.append(entry)
        return self.ids[variable]

    def _data(self, value: Any) -> dict[str, Any]:
        if isinstance(value, str):
            return {"string": value}
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            raise Failure("forbidden_model", f"a constant of dtype {array.dtype} in the model")
        self.values += array.size
        if self.values > MAX_CONSTANT_VALUES:
            raise Failure(
                "forbidden_model", f"the model's constants exceed {MAX_CONSTANT_VALUES} values"
            )
        return {
            "dtype": str(array.dtype),
            "shape": list(array.shape),
            "values": array.ravel().tolist(),
        }


def describe_type(variable_type: Any) -> dict[str, Any]:
    """A variable's type as plain data."""
    if isinstance(variable_type, TensorType):
        return {"tensor": str(variable_type.dtype), "shape": list(variable_type.shape)}
    if isinstance(variable_type, RandomType):
        return {"rng": True}
    if isinstance(variable_type, NoneTypeT):
        return {"none": True}
    if isinstance(variable_type, SliceType | NullType):
        return {"other": type(variable_type).__name__}
    scalar_dtype = getattr(variable_type, "dtype", None)
    if type(variable_type).__name__ == "ScalarType":
        return {"scalar": str(scalar_dtype)}
    return {"other": type(variable_type).__name__}


def op_class(op: Any) -> str:
    return f"{type(op).__module__}.{type(op).__qualname__}"


def describe_op(op: Any, writer: _Writer) -> dict[str, Any]:
    """An op as its class name plus props in plain values (a Scan with its inner graph)."""
    name = op_class(op)
    if name == "pytensor.scan.op.Scan":
        return {
            "class": name,
            "info": {key: _plain(value) for key, value in vars(op.info).items()},
            "truncate_gradient": op.truncate_gradient,
            **writer.inner_graph(op.fgraph),
        }
    if isinstance(op, ModelObservedRV) or name.endswith(
        ("ModelFreeRV", "ModelDeterministic", "ModelNamed")
    ):
        transform = getattr(op, "transform", None)
        props = {} if transform is None else {"transform": op_class(transform)}
        return {"class": name, "props": props}
    if _is_symbolic_rv(op):  # rebuilt from its family name only
        return {"class": name, "props": {}}
    props = {}
    for prop in getattr(op, "__props__", ()):
        props[prop] = describe_prop(getattr(op, prop))
    return {"class": name, "props": props}


def describe_prop(value: Any) -> Any:
    """A prop value as plain data: scalar ops and scalar types by name, slices as triples."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple | list):
        return [describe_prop(item) for item in value]
    if isinstance(value, slice):
        return {"slice": [describe_prop(part) for part in (value.start, value.stop, value.step)]}
    if isinstance(value, Mapping):
        return {"mapping": [[describe_prop(k), describe_prop(v)] for k, v in value.items()]}
    if type(value).__name__ == "ScalarType":
        return {"scalar_type": str(value.dtype)}
    if hasattr(value, "output_types_preference"):  # a scalar op
        return {"scalar_op": scalar_op_key(value)}
    if isinstance(value, np.dtype):
        return str(value)
    return {"object": f"{type(value).__module__}.{type(value).__qualname__}"}


def scalar_op_key(op: Any) -> str:
    """How phase 2 finds the canonical instance of a scalar op: class, plus target dtype."""
    key = op_class(op)
    target = getattr(op, "o_type", None)
    return f"{key}:{target.dtype}" if target is not None else key


def _is_symbolic_rv(op: Any) -> bool:
    from pymc.distributions.distribution import SymbolicRandomVariable

    return isinstance(op, SymbolicRandomVariable)


def _array_of(variable: Variable) -> np.ndarray | None:
    if isinstance(variable, Constant):
        return np.asarray(variable.data)
    if isinstance(variable, SharedVariable):
        return np.asarray(variable.get_value(borrow=True))
    return None


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    return value


def _spelled(names) -> str:
    return ", ".join(f"data[{name!r}]" for name in names)
