"""The ``walrusfs`` command line.

Exit codes scripts can rely on: 0 success, 1 the operation failed (peers unreachable,
too few valid answers), 2 usage error, 3 the blob is invalid (inconsistently encoded),
4 the blob does not exist (or expired, or was deleted), 5 refused: no grant, over quota.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from .. import __version__
from ..allocator import tune_allocator
from .audit import audit
from .blobs import blob_id, blob_status, delete, extend, read, store
from .devnet import devnet
from .grants import grant
from .log import log_command
from .mounts import mount, status, umount
from .peers import health, init, peer
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
for _command in (audit, blob_id, blob_status, delete, devnet, extend, gc, grant, health, init, log_command, mount,
                 peer, read, status, store, umount, volume):
    main.add_command(_command)
