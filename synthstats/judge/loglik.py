"""The pointwise log-likelihood of the observed variables, compiled once per program.

Phase 2 needs it on prior draws (the leak check), on the posterior and on each refit's
posterior (LOO). PyMC's `compute_log_likelihood` compiles it each time and calls it once
per draw; this is the same graph (the model without value transforms, so it takes
constrained draws), compiled once and vectorised over draws: a thousand draws in ten
calls, not a thousand. What cannot be vectorised, or fails batched (an invalid parameter
in one draw raises for its whole batch, where PyMC gives that draw -inf; memory), is
evaluated draw by draw as PyMC does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
from pymc.backends.arviz import (
    apply_function_over_dataset,
    coords_and_dims_for_inferencedata,
    dict_to_dataset,
)
from pymc.model.transform.conditioning import remove_value_transforms
from pytensor.graph.basic import clone
from pytensor.graph.replace import vectorize_graph

# Draws per batched call: bounds the batch's intermediates at this many draws' worth.
DRAWS_PER_CALL = 100
_SAMPLE_DIMS = ("chain", "draw")


class PointwiseLogLikelihood:
    """log p(y_i | theta) for each observed variable, from constrained draws of theta."""

    def __init__(self, model: pm.Model, observed_names: Sequence[str]):
        self.names = tuple(observed_names)
        self._model = remove_value_transforms(model)
        targets = [self._model.named_vars[name] for name in self.names]
        self._terms = self._model.logp(vars=targets, sum=False)
        self._free = [rv.name for rv in self._model.free_RVs]
        self._values = [self._model.rvs_to_values[rv] for rv in self._model.free_RVs]
        self._batched = _batched_function(self._values, self._terms)
        self._per_draw: Any = None

    @property
    def function(self) -> Any:
        """The per-draw function (a PyMC PointFunc of a point dict), compiled on first use."""
        if self._per_draw is None:
            self._per_draw = self._model.compile_fn(
                inputs=self._values, outs=self._terms, on_unused_input="ignore"
            )
        return self._per_draw

    def dataset(self, draws: Any) -> Any:
        """An xarray Dataset of the pointwise log-likelihood over draws (chain, draw)."""
        coords, dims = coords_and_dims_for_inferencedata(self._model)
        pointwise = self._evaluate_batched(draws)
        if pointwise is not None:
            return dict_to_dataset(
                pointwise,
                library=pm,
                dims=dims,
                coords=coords,
                default_dims=list(_SAMPLE_DIMS),
                skip_event_dims=True,
            )
        return apply_function_over_dataset(
            self.function,
            draws[self._free],
            output_var_names=self.names,
            sample_dims=_SAMPLE_DIMS,
            dims=dims,
            coords=coords,
            progressbar=False,
        )

    def add_to(self, idata: Any) -> None:
        """idata's log_likelihood group, computed from its posterior."""
        idata.add_groups({"log_likelihood": self.dataset(idata.posterior)})

    def _evaluate_batched(self, draws: Any) -> dict[str, np.ndarray] | None:
        """None where these draws must go draw by draw (module doc)."""
        if self._batched is None:
            return None
        try:
            return self._batches(draws)
        except Exception:
            return None

    def _batches(self, draws: Any) -> dict[str, np.ndarray]:
        chains, per_chain = draws.sizes["chain"], draws.sizes["draw"]
        total = chains * per_chain
        inputs = [
            np.asarray(draws[name].values, dtype=value.dtype).reshape(total, *draws[name].shape[2:])
            for name, value in zip(self._free, self._values, strict=True)
        ]
        calls = []
        for start in range(0, total, DRAWS_PER_CALL):
            batch = [values[start : start + DRAWS_PER_CALL] for values in inputs]
            outputs = self._batched(*batch)
            # a term that no free variable enters comes back without the draw axis
            calls.append(
                [
                    np.broadcast_to(output, (len(batch[0]), *output.shape))
                    if output.ndim == term.ndim
                    else output
                    for output, term in zip(outputs, self._terms, strict=True)
                ]
            )
        return {
            name: np.concatenate(parts).reshape(chains, per_chain, *parts[0].shape[1:])
            for name, parts in zip(self.names, zip(*calls, strict=True), strict=True)
        }


def _batched_function(values: list[Any], terms: list[Any]) -> Any:
    """The terms as a function of the values with a leading draw axis; None for a model
    without free variables (nothing to batch) or a graph PyTensor cannot vectorise."""
    if not values:
        return None
    batched = [
        pt.tensor(f"batched_{value.name}", dtype=value.dtype, shape=(None, *value.type.shape))
        for value in values
    ]
    try:
        # A Scan vectorises to a Blockwise around the model's own Scan op, whose inner graph
        # compiling rewrites in place (the model's gradient was lost to fusion): a copy.
        _, own = clone(
            values, terms, copy_inputs=False, copy_orphans=False, clone_inner_graphs=True
        )
        outputs = vectorize_graph(own, replace=dict(zip(values, batched, strict=True)))
        return pytensor.function(batched, outputs, on_unused_input="ignore")
    except Exception:
        return None
