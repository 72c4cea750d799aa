"""The ``boed`` command line (typer). Thin: every command parses options and calls a library function."""
