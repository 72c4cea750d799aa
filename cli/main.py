"""The ``boed`` application: registers the command groups of each part of the project."""

from __future__ import annotations

import typer

from boed import __version__
from cli import amortized, classifier, data, evaluate, propose, retrieval, sampler, sessions, simulate

app = typer.Typer(
    name="boed",
    help="Bayesian optimal experimental design for small field-of-view x-ray acquisition.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"boed {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version."
    ),
) -> None:
    """Bayesian optimal experimental design for small field-of-view x-ray acquisition."""


for part in (data, classifier, sampler, evaluate, simulate, propose, sessions, retrieval, amortized):
    part.register(app)

if __name__ == "__main__":
    app()
