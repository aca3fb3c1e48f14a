"""Phase 2 of scoring: validate a model description and rebuild the model from it.

Runs in a process where no program code ever ran. Every op comes from the allowlist
(`allowlist.py`), built by the judge from plain props; every distribution is a built-in one
(SymbolicRandomVariables from their family name, transforms from a fixed table); the
observed values are the env's own arrays, attached here. Refusals are `forbidden_model`
(a construct the judge does not rebuild) or `data_mismatch` (the likelihood rules).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pymc as pm
import pytensor
import pytensor.scalar as ps
import pytensor.tensor as pt
from pymc.distributions.distribution import SymbolicRandomVariable
from pymc.distributions.transforms import _default_transform
from pymc.model.fgraph import (
    ModelDeterministic,
    ModelFreeRV,
    ModelNamed,
    ModelObservedRV,
    model_from_fgraph,
)
from pytensor.graph.basic import Variable
from pytensor.graph.fg import FunctionGraph
from pytensor.scan.op import Scan
from pytensor.tensor.random.op import RandomVariable
from pytensor.tensor.random.type import RandomGeneratorType
from pytensor.tensor.type import TensorType
from pytensor.tensor.type_other import NoneConst

from synthstats.judge.allowlist import (
    SCAN,
    Forbidden,
    build_op,
    check_dtype,
    check_int,
    named_transforms,
    scan_info,
    symbolic_random_variables,
)
from synthstats.judge.describe import MAX_CONSTANT_VALUES, MAX_NODES, VERSION, op_class
from synthstats.judge.score import Failure

_MODEL_VARS = {
    f"{cls.__module__}.{cls.__qualname__}": cls
    for cls in (ModelFreeRV, ModelObservedRV, ModelDeterministic, ModelNamed)
}
_POTENTIAL = "pymc.model.fgraph.ModelPotential"
_MAX_NAME = 200
_MAX_SCAN_DEPTH = 3


def rebuild_model(description: Any, observed: Mapping[str, np.ndarray]) -> pm.Model:
    """The pm.Model a description stands for, with the env's observed arrays attached."""
    if not isinstance(description, dict) or description.get("version") != VERSION:
        raise Forbidden(f"the model description is not version {VERSION}")
    for key in ("variables", "nodes", "outputs"):
        if not isinstance(description.get(key), list):
            raise Forbidden(f"the model description has no {key} list")
    builder = _Builder(description["variables"], observed)
    builder.nodes(description["nodes"], depth=0)
    outputs = [builder.get(index) for index in description["outputs"]]
    try:
        fgraph = FunctionGraph(outputs=outputs, clone=False)
    except Exception as error:
        raise Forbidden(f"the described model does not assemble: {_error(error)}") from None
    builder.check_likelihoods(fgraph)
    builder.check_values(fgraph)
    fgraph._coords = _coords(description.get("coords", {}))
    fgraph._dim_lengths = builder.dim_lengths(description.get("dim_lengths", {}), fgraph._coords)
    order = {variable.name: position for position, variable in enumerate(outputs)}
    try:
        model = model_from_fgraph(fgraph, mutate_fgraph=True)
    except (TypeError, ValueError, AssertionError, KeyError) as error:
        raise Forbidden(f"the described model does not assemble: {error}") from None
    _keep_order(model, order)
    return model


def _keep_order(model: pm.Model, order: dict[str, int]) -> None:
    """The program's order of variables (model_from_fgraph takes a topological one): NUTS
    sees the same parameter vector, so an honest program keeps its seeded score."""
    last = len(order)
    for variables in (model.free_RVs, model.observed_RVs, model.deterministics):
        variables.sort(key=lambda variable: order.get(variable.name, last))
    named = sorted(model.named_vars.items(), key=lambda item: order.get(item[0], last))
    model.named_vars.clear()
    model.named_vars.update(named)


class _Builder:
    """Makes the described variables, node by node, into a graph of allowed ops."""

    def __init__(self, variables: list[Any], observed: Mapping[str, np.ndarray]):
        if len(variables) > MAX_NODES:
            raise Forbidden(f"the model has over {MAX_NODES} variables")
        self.entries = variables
        self.observed = observed
        self.made: dict[int, Variable] = {}
        self.observed_made: dict[str, Variable] = {}
        self.values = 0
        # The free variables' value inputs: each must be the value of one free variable.
        self.value_inputs: list[Variable] = []
        # Inside a Scan: the indices its inner graph may use (its own, and constants).
        self.scopes: list[set[int]] = []

    def get(self, index: Any) -> Variable:
        if type(index) is not int or not 0 <= index < len(self.entries):
            raise Forbidden(f"variable reference {index!r} is out of range")
        entry = self.entries[index]
        outside = self.scopes and index not in self.scopes[-1]
        if outside and not (isinstance(entry, dict) and entry.get("kind") in ("constant", "none")):
            raise Forbidden("a Scan's inner graph uses a variable from outside it")
        if index not in self.made:
            self.made[index] = self._leaf(index, self.entries[index])
        return self.made[index]

    def _leaf(self, index: int, entry: Any) -> Variable:
        if not isinstance(entry, dict):
            raise Forbidden(f"variable {index} is not described")
        kind, name = entry.get("kind"), _name(entry.get("name"))
        if kind == "none":
            return NoneConst
        if kind == "rng":
            return pytensor.shared(np.random.default_rng(index), name=name)
        if kind == "observed":
            return self._observed(entry)
        if kind == "constant":
            value = self._array(entry.get("data"))
            if isinstance(value, str):
                return pytensor.as_symbolic(value)
            if "scalar" in (entry.get("type") or {}):
                return ps.constant(value.item(), dtype=str(value.dtype), name=name)
            return pt.constant(value, name=name)
        if kind == "shared":
            value = self._array(entry.get("data"))
            if isinstance(value, str):
                raise Forbidden("a shared string in the model")
            return pytensor.shared(value, name=name)
        if kind == "input":
            variable = _variable_of(entry.get("type"), name)
            self.value_inputs.append(variable)
            return variable
        if kind == "inner":
            return _variable_of(entry.get("type"), name)
        if kind == "output":
            raise Forbidden(f"variable {index} is used before the node that makes it")
        raise Forbidden(f"variable {index} has unknown kind {kind!r}")

    def _observed(self, entry: dict[str, Any]) -> Variable:
        env_name = entry.get("env_name")
        if env_name not in self.observed:
            raise Failure("data_mismatch", f"{env_name!r} is not one of the env's observed arrays")
        if env_name in self.observed_made:
            raise Failure("data_mismatch", f"data[{env_name!r}] is observed twice")
        variable_type = entry.get("type") or {}
        dtype = check_dtype(variable_type.get("tensor"))
        array = np.asarray(self.observed[env_name])
        cast = array.astype(dtype)
        if not np.array_equal(cast, array):
            raise Failure("data_mismatch", f"data[{env_name!r}] does not fit dtype {dtype}")
        if entry.get("shared") is True:  # a pm.Data holding it
            variable = pytensor.shared(cast, name=_name(entry.get("name")))
        else:
            variable = pt.constant(cast, name=_name(entry.get("name")))
        self.observed_made[env_name] = variable
        return variable

    def _array(self, data: Any) -> np.ndarray | str:
        if isinstance(data, dict) and set(data) == {"string"} and isinstance(data["string"], str):
            return data["string"][:_MAX_NAME]
        if not isinstance(data, dict) or not isinstance(data.get("values"), list):
            raise Forbidden("a constant must hold dtype, shape and values")
        dtype = check_dtype(data.get("dtype"))
        shape = data.get("shape")
        if not isinstance(shape, list) or len(shape) > 32:
            raise Forbidden("a constant's shape must be a short list")
        shape = [check_int(size, "a constant's shape") for size in shape]
        self.values += len(data["values"])
        if self.values > MAX_CONSTANT_VALUES:
            raise Forbidden(f"the model's constants exceed {MAX_CONSTANT_VALUES} values")
        if any(size < 0 for size in shape) or int(np.prod(shape)) != len(data["values"]):
            raise Forbidden("a constant's values do not fill its shape")
        if not all(type(value) in (int, float, bool) for value in data["values"]):
            raise Forbidden("a constant must hold numbers only")
        return np.asarray(data["values"], dtype=dtype).reshape(shape)

    def nodes(self, nodes: list[Any], depth: int) -> None:
        if len(nodes) > MAX_NODES:
            raise Forbidden(f"the model has over {MAX_NODES} graph nodes")
        for node in nodes:
            if not isinstance(node, dict):
                raise Forbidden("a node must be a mapping")
            inputs = [self.get(index) for index in _list(node.get("inputs"), "node inputs")]
            outputs = self._apply(node.get("op"), inputs, depth)
            indices = _list(node.get("outputs"), "node outputs")
            if len(indices) != len(outputs):
                raise Forbidden(f"{_class(node)} makes {len(outputs)} outputs, not {len(indices)}")
            for index, output in zip(indices, outputs, strict=True):
                entry = (
                    self.entries[index]
                    if type(index) is int and index < len(self.entries)
                    else None
                )
                if (
                    not isinstance(entry, dict)
                    or entry.get("kind") != "output"
                    or index in self.made
                ):
                    raise Forbidden(f"output reference {index!r} is not a fresh output variable")
                if (name := _name(entry.get("name"))) is not None:
                    output.name = name
                self.made[index] = output
                if self.scopes:
                    self.scopes[-1].add(index)

    def _apply(self, op: Any, inputs: list[Variable], depth: int) -> list[Variable]:
        name = op.get("class") if isinstance(op, dict) else None
        try:
            if name == _POTENTIAL:
                raise Forbidden("pm.Potential is not allowed: every term must be a distribution")
            if name in _MODEL_VARS:
                if depth:
                    raise Forbidden(f"{name} inside a Scan")
                return self._model_var(_MODEL_VARS[name], op, inputs)
            if name == SCAN:
                return self._scan(op, inputs, depth)
            if name in symbolic_random_variables():
                if depth:
                    raise Forbidden("random variables inside a Scan are not allowed")
                return self._symbolic_rv(symbolic_random_variables()[name], op, inputs)
            built = build_op(op)
            if depth and op_class(built).startswith("pytensor.tensor.random"):
                raise Forbidden("random variables inside a Scan are not allowed")
            return built.make_node(*inputs).outputs
        except Failure:
            raise
        except Exception as error:  # a wrong input count or type for an allowed op
            raise Forbidden(f"{name} does not apply to its inputs: {_error(error)}") from None

    def _model_var(self, cls: type, op: dict[str, Any], inputs: list[Variable]) -> list[Variable]:
        props = op.get("props", {})
        if cls is not ModelFreeRV:
            if props:
                raise Forbidden(f"{cls.__name__} takes no props")
            return cls().make_node(*inputs).outputs
        if not isinstance(props, dict) or set(props) - {"transform"} or len(inputs) < 2:
            raise Forbidden("a free variable has its variable, value and at most a transform")
        rv = inputs[0]
        transform = _transform_for(rv, props.get("transform"))
        return ModelFreeRV(transform=transform).make_node(*inputs).outputs

    def _symbolic_rv(
        self, distribution: type, op: dict[str, Any], inputs: list[Variable]
    ) -> list[Variable]:
        if op.get("props"):
            raise Forbidden(f"{distribution.__name__} is rebuilt from its family name only")
        if len(inputs) < 2:
            raise Forbidden(f"{distribution.__name__} needs rng, size and parameters")
        rng, size, *params = inputs
        size = None if size is NoneConst else size
        draws = distribution.rv_op(*params, size=size, rng=rng)
        return draws.owner.outputs

    def _scan(self, op: dict[str, Any], inputs: list[Variable], depth: int) -> list[Variable]:
        if depth >= _MAX_SCAN_DEPTH:
            raise Forbidden(f"Scans nested over {_MAX_SCAN_DEPTH} deep")
        indices = _list(op.get("inner_inputs"), "inner inputs")
        for index in indices:
            entry = (
                self.entries[index] if type(index) is int and index < len(self.entries) else None
            )
            if not isinstance(entry, dict) or entry.get("kind") != "inner" or index in self.made:
                raise Forbidden("a Scan's inner inputs must be fresh inner variables")
        self.scopes.append(set(indices))
        try:
            inner_inputs = [self.get(index) for index in indices]
            self.nodes(_list(op.get("inner_nodes"), "inner nodes"), depth + 1)
            inner_outputs = [self.get(index) for index in _list(op.get("inner_outputs"), "inner")]
        finally:
            self.scopes.pop()
        truncate = check_int(op.get("truncate_gradient"), "truncate_gradient")
        scan = Scan(
            inner_inputs, inner_outputs, scan_info(op.get("info")), truncate_gradient=truncate
        )
        return scan.make_node(*inputs).outputs

    def check_likelihoods(self, fgraph: FunctionGraph) -> None:
        """Each env observed array: the value of exactly one built-in likelihood, of its
        name, and nothing else."""
        outputs = fgraph.outputs
        for env_name in self.observed:
            value = self.observed_made.get(env_name)
            if value is None:
                raise Failure("data_mismatch", f"no observed variable holds data[{env_name!r}]")
            users = [node for node, _ in fgraph.clients.get(value, [])]
            if len(users) == 1 and isinstance(users[0].op, ModelNamed):  # pm.Data
                value = users[0].outputs[0]
                users = [node for node, _ in fgraph.clients.get(value, [])]
            if (
                len(users) != 1
                or not isinstance(users[0].op, ModelObservedRV)
                or users[0].inputs[1] is not value
            ):
                raise Failure(
                    "data_leak",
                    f"data[{env_name!r}] must be the observed value of exactly one likelihood "
                    "and appear nowhere else",
                )
            holder = users[0].outputs[0]
            likelihood = users[0].inputs[0].owner
            if likelihood is None or not isinstance(
                likelihood.op, RandomVariable | SymbolicRandomVariable
            ):
                raise Forbidden(f"the likelihood of {env_name!r} is not a built-in distribution")
            if holder.name != env_name:
                raise Failure(
                    "data_mismatch",
                    f"data[{env_name!r}] is observed by {holder.name!r}; name the "
                    f"likelihood {env_name!r}",
                )
        observed_values = set(self.observed_made.values())
        for variable in outputs:
            node = variable.owner
            if node is None or not isinstance(node.op, ModelObservedRV):
                continue
            value = node.inputs[1]
            if value.owner is not None and isinstance(value.owner.op, ModelNamed):
                value = value.owner.inputs[0]
            if value not in observed_values:
                raise Failure(
                    "data_mismatch", f"observed variable {variable.name!r} holds other data"
                )

    def check_values(self, fgraph: FunctionGraph) -> None:
        """A free variable's value is a fresh input used by it alone: a value computed from
        other parameters would add a logp term on them, a Potential in disguise."""
        inputs = set(self.value_inputs)
        for variable in self.value_inputs:
            users = [node for node, _ in fgraph.clients.get(variable, [])]
            if len(users) != 1 or not isinstance(users[0].op, ModelFreeRV):
                raise Forbidden(f"value input {variable.name!r} is not one free variable's value")
        for node in fgraph.apply_nodes:
            if isinstance(node.op, ModelFreeRV) and node.inputs[1] not in inputs:
                raise Forbidden(f"free variable {node.outputs[0].name!r} has a computed value")

    def dim_lengths(self, lengths: Any, coords: dict[str, Any]) -> dict[str, Variable]:
        if not isinstance(lengths, dict):
            raise Forbidden("dim_lengths must be a mapping")
        made = {_name(dim): self.get(index) for dim, index in lengths.items()}
        for dim, values in coords.items():
            if dim not in made and values is not None:
                made[dim] = pt.constant(len(values), dtype="int64")
        return made


def _transform_for(rv: Variable, name: Any) -> Any:
    if name is None:
        return None
    default = _default_transform(rv.owner.op, rv) if rv.owner is not None else None
    if default is not None and name == op_class(default):
        return default
    named = named_transforms()
    if name in named:
        return named[name]
    raise Forbidden(f"transform {name!r} is not allowed (use the default or a named one)")


def _variable_of(variable_type: Any, name: str | None) -> Variable:
    if not isinstance(variable_type, dict):
        raise Forbidden("a variable must have a type")
    if "tensor" in variable_type:
        shape = variable_type.get("shape")
        if not isinstance(shape, list) or len(shape) > 32:
            raise Forbidden("a tensor type needs a short shape list")
        static = tuple(None if size is None else check_int(size, "shape") for size in shape)
        return TensorType(check_dtype(variable_type["tensor"]), shape=static)(name=name)
    if "scalar" in variable_type:
        return ps.get_scalar_type(check_dtype(variable_type["scalar"]))(name=name)
    if variable_type.get("rng") is True:
        return RandomGeneratorType()(name=name)
    raise Forbidden(f"variable type {variable_type!r} is not allowed")


def _coords(coords: Any) -> dict[str, Any]:
    if not isinstance(coords, dict):
        raise Forbidden("coords must be a mapping")
    clean = {}
    for dim, values in coords.items():
        if values is not None and not (
            isinstance(values, list)
            and all(type(value) in (int, float, str, bool) for value in values)
        ):
            raise Forbidden(f"coords {dim!r} must be a list of plain values")
        clean[_name(dim)] = None if values is None else tuple(values)
    return clean


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise Forbidden(f"{what} must be a list")
    return value


def _name(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > _MAX_NAME:
        raise Forbidden("a name must be a short string")
    return value


def _class(node: dict[str, Any]) -> str:
    op = node.get("op")
    return str(op.get("class")) if isinstance(op, dict) else "a node"


def _error(error: Exception) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= 200 else text[:197] + "..."
