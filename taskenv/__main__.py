"""`python -m taskenv`: the operator's CLI, the same as the `taskenv` console script."""

from taskenv.cli.main import app

app()
