"""The `ddk` command: the click group over one module per verb (no logic of its own).

User errors (ddk.cache.errors.DDKError and loss-input errors) become one line on stderr
and exit status 1, and so does a full disk (ENOSPC, EDQUOT), with what a re-run keeps;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import sys
from typing import Any

import click
from ddk.cache.errors import DDKError
from ddk.cli.cache_teacher import cache_teacher
from ddk.cli.demo import demo
from ddk.cli.evaluate import eval_model
from ddk.cli.inspect_cache import inspect_cache
from ddk.cli.train_student import train_student

#: errno values that mean "no room left to write": a full disk, or a full quota
DISK_FULL = frozenset(getattr(errno, name) for name in ("ENOSPC", "EDQUOT")
                      if hasattr(errno, name))
#: what a re-run after a full disk keeps, by subcommand (the others: just re-run)
_AFTER_DISK_FULL = {
    "cache-teacher": "re-run the same command: the shards already finished are kept and "
                     "only the rest is scored",
    "train-student": "re-run the same command with --resume: it continues from the last "
                     "complete checkpoint, which is kept",
}


def disk_full_error(e: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT OSError that `e` is or was raised from (torch.save, for one,
    reports it as a RuntimeError with the OSError as its context), else None."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, OSError) and cur.errno in DISK_FULL:
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def disk_full_message(e: OSError, command: str | None) -> str:
    """The one line printed for a full disk: what failed, where, and what to do."""
    where = f" writing {e.filename}" if e.filename else ""
    reason = e.strerror or "No space left on device"
    then = _AFTER_DISK_FULL.get(command or "", "re-run the same command")
    return f"error: disk full ({reason}){where}; free some space, then {then}"


class DDKGroup(click.Group):
    """Turns user errors raised by any subcommand into `error: ...` and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DDKError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        except Exception as e:
            full = disk_full_error(e)
            if full is None:
                raise
            click.echo(disk_full_message(full, ctx.invoked_subcommand), err=True)
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
