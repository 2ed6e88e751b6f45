"""The `builder` command: one group, each domain's commands registered in it (builder/<domain>/commands.py)."""

from __future__ import annotations

import sys

import click

import builder.bench.commands
import builder.bundle.commands
import builder.cluster.commands
import builder.doctor.commands
import builder.images.commands
import builder.models.commands
import builder.plan.commands
import builder.stack.commands
from builder.core.command import Command


@click.group(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Build the images and run the stacks that self-host DeepSeek-R1."""


for domain in (builder.images.commands, builder.models.commands, builder.plan.commands, builder.bench.commands,
               builder.cluster.commands, builder.doctor.commands, builder.stack.commands, builder.bundle.commands):
    for command in domain.COMMANDS:
        main.add_command(command)


if __name__ == "__main__":
    sys.exit(main())
