"""``therapref``: the one command line. Each command parses, calls one library function, prints.

One module per area of commands; each defines plain functions and a ``register(app)`` that adds
them with ``app.command(NAME)(function)`` (groups: ``group.command(NAME)(function)`` and
``app.add_typer(group, name=…)``). Library code never imports this package.
"""

from __future__ import annotations

import typer

from therapref.cli import (
    abtest,
    active,
    app_server,
    candidates,
    core,
    demo,
    exporting,
    generating,
    importing,
    judging,
    loop,
    policy,
    reporting,
    serving,
    training,
)

app = typer.Typer(
    name="therapref",
    help="Collect clinicians' preferences on therapy-chatbot replies; train reward models; export data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for _area in (core, importing, demo, generating, app_server, training, exporting, policy, reporting, active, judging,
              abtest, candidates, loop, serving):
    _area.register(app)
