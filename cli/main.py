"""The `ddk` command: the click group over one module per verb (no logic of its own).

User errors (ddk.cache.errors.DDKError and loss-input errors) become one line on stderr
and exit status 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import Any

import click
from ddk.cache.errors import DDKError
from ddk.cli.cache_teacher import cache_teacher
from ddk.cli.demo import demo
from ddk.cli.evaluate import eval_model
from ddk.cli.inspect_cache import inspect_cache
from ddk.cli.train_student import train_student


class DDKGroup(click.Group):
    """Turns user errors raised by any subcommand into `error: ...` and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DDKError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted; re-run the same command to continue where it stopped",
                       err=True)
            sys.exit(130)


@click.group(cls=DDKGroup, context_settings={"help_option_names": ["-h", "--help"],
                                              "max_content_width": 100})
@click.version_option(package_name="ddk")
def cli() -> None:
    """Distil LLMs from an offline teacher cache with DDK domain-aware data mixing.

    \b
    Typical flow:
      ddk cache-teacher --teacher T --domain code=data/code --domain web=data/web -o cache
      ddk inspect-cache cache
      ddk train-student --cache cache --student S --out run
    """


for _command in (cache_teacher, inspect_cache, train_student, eval_model, demo):
    cli.add_command(_command)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
