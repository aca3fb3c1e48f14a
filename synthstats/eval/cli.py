"""`synthstats eval RUN_DIR`: sample a trained policy, score it, and report how good it is."""

from __future__ import annotations

import json
from pathlib import Path

import click

from synthstats.errors import UserFacingError


@click.command("eval")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--samples", default=64, show_default=True, type=int, help="Completions to sample.")
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path),
    default=None,
    help="A checkpoint folder (RUN_DIR/checkpoints/step-NNNNNN); default: the latest.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def eval_command(run_dir: Path, samples: int, checkpoint: Path | None, as_json: bool) -> None:
    """Measure a run's trained policy: validity, diversity, reward and calibration.

    Writes RUN_DIR/eval_report.json and PNG plots; policy=slot runs get exact metrics.
    """
    from synthstats.config import ConfigError
    from synthstats.eval.evaluate import EvalError, evaluate, summary_text

    try:
        report = evaluate(run_dir, samples=samples, checkpoint=checkpoint)
    except (EvalError, ConfigError) as error:  # the run directory or options: exit 2
        raise click.UsageError(str(error)) from None
    except UserFacingError as error:  # a failure while evaluating: exit 1
        raise click.ClickException(str(error)) from None
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(summary_text(report))
        click.echo(f"report: {run_dir / 'eval_report.json'}")
