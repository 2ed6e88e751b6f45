"""The `builder` command: one group, each domain's commands registered in it (builder/<domain>/commands.py)."""

from __future__ import annotations

import sys

import click

from builder.bench import commands as bench
from builder.cluster import commands as cluster
from builder.core.command import Command
from builder.images import commands as images
from builder.models import commands as models
from builder.plan import commands as plan


@click.group(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Build the images and run the stacks that self-host DeepSeek-R1."""


for domain in (images, models, plan, bench, cluster):
    for command in domain.COMMANDS:
        main.add_command(command)


if __name__ == "__main__":
    sys.exit(main())
