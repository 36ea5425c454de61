"""The ``walrusfs`` command line.

Exit codes scripts can rely on: 0 success, 1 the operation failed (peers unreachable,
too few valid answers), 2 usage error, 3 the blob is invalid (inconsistently encoded),
4 the blob does not exist (or expired, or was deleted), 5 refused: no grant, over quota.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from typing import Any

import click

from .. import __version__
from ..allocator import tune_allocator
from .audit import audit
from .blobs import blob_id, blob_status, delete, extend, read, store
from .devnet import devnet
from .gateway import gateway
from .grants import grant
from .log import log_command
from .mounts import mount, status, umount
from .peers import health, init, peer
from .quilts import list_quilt, read_quilt, store_quilt
from .volumes import gc, volume

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup


class _Main(click.Group):
    """The command group; a bug that escapes a command is one line, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; an unexpected exception becomes one line (WALRUSFS_DEBUG=1 keeps the traceback)."""
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # click's own: --help of a group exits through Exit(0)
        except BrokenPipeError:
            # `walrusfs log | head`: the reader left; say nothing more (and let the interpreter's
            # final flush go to /dev/null instead of raising again).
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise click.exceptions.Exit(1) from None
        except Exception as exc:
            if os.environ.get("WALRUSFS_DEBUG"):
                raise
            leaf: BaseException = exc
            while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
                leaf = leaf.exceptions[0]
            raise click.ClickException(
                f"unexpected {type(leaf).__name__}: {leaf} (WALRUSFS_DEBUG=1 shows the traceback; please report it)"
            ) from exc


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="walrusfs")
def main() -> None:
    """walrusfs: a verifiable filesystem on RedStuff-encoded storage peers."""
    tune_allocator()


# One module per command group (as borgbackup's archiver does); each defines its commands
# and main collects them here.
for _command in (audit, blob_id, blob_status, delete, devnet, extend, gateway, gc, grant, health, init, list_quilt,
                 log_command, mount, peer, read, read_quilt, status, store, store_quilt, umount, volume):
    main.add_command(_command)


#: A blob or volume ID: 43 characters of URL-safe base64. One in 64 starts with '-', which
#: click would take for an option ("No such option: -c") unless the user knew to type "--".
_ID = re.compile(r"-[A-Za-z0-9_-]{42}")


def _ids_first_positional(args: list[str], valued: set[str]) -> list[str]:
    """``args`` with every ID that starts with '-' kept as an argument: options first, then ``--``, then the arguments in order."""
    if "--" in args or not any(_ID.fullmatch(a) for a in args):
        return args
    options: list[str] = []
    arguments: list[str] = []
    k = 0
    while k < len(args):
        if args[k] in valued and k + 1 < len(args):
            options += args[k : k + 2]  # an option's value stays its value, whatever it looks like
            k += 2
            continue
        arg = args[k]
        (arguments if _ID.fullmatch(arg) or not arg.startswith("-") or arg == "-" else options).append(arg)
        k += 1
    return [*options, "--", *arguments]


def _take_ids_as_arguments(command: click.Command) -> None:
    """Make ``command`` and every command under it accept IDs starting with '-' where an argument goes."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _take_ids_as_arguments(sub)
        return
    valued = {name for p in command.params if isinstance(p, click.Option) and not p.is_flag and not p.count
              for name in p.opts}
    parse: Callable[[click.Context, list[str]], list[str]] = command.parse_args

    def parse_args(ctx: click.Context, args: list[str]) -> list[str]:
        return parse(ctx, _ids_first_positional(args, valued))

    command.parse_args = parse_args  # type: ignore[method-assign]


_take_ids_as_arguments(main)
