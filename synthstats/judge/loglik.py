"""The pointwise log-likelihood of the observed variables, compiled once per program.

Phase 2 needs it twice: on prior draws (the leak check) and on the posterior (LOO). PyMC's
`compute_log_likelihood` would compile it each time; this is the same function (the model
without value transforms, so it takes constrained draws), compiled once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pymc as pm
from pymc.backends.arviz import apply_function_over_dataset, coords_and_dims_for_inferencedata
from pymc.model.transform.conditioning import remove_value_transforms


class PointwiseLogLikelihood:
    """log p(y_i | theta) for each observed variable, from constrained draws of theta."""

    def __init__(self, model: pm.Model, observed_names: Sequence[str]):
        self.names = tuple(observed_names)
        self._model = remove_value_transforms(model)
        targets = [self._model.named_vars[name] for name in self.names]
        self.function = self._model.compile_fn(
            inputs=self._model.value_vars,
            outs=self._model.logp(vars=targets, sum=False),
            on_unused_input="ignore",
        )

    def dataset(self, draws: Any) -> Any:
        """An xarray Dataset of the pointwise log-likelihood over draws (chain, draw)."""
        coords, dims = coords_and_dims_for_inferencedata(self._model)
        return apply_function_over_dataset(
            self.function,
            draws[[rv.name for rv in self._model.free_RVs]],
            output_var_names=self.names,
            sample_dims=("chain", "draw"),
            dims=dims,
            coords=coords,
            progressbar=False,
        )

    def add_to(self, idata: Any) -> None:
        """idata's log_likelihood group, computed from its posterior."""
        idata.add_groups({"log_likelihood": self.dataset(idata.posterior)})
