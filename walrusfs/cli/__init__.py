"""The ``walrusfs`` command line.

Exit codes scripts can rely on: 0 success, 1 the operation failed (peers unreachable,
too few valid answers), 2 usage error, 3 the blob is invalid (inconsistently encoded),
4 the blob does not exist.
"""

from __future__ import annotations

import click

from .. import __version__
from ..allocator import tune_allocator
from .audit import audit
from .blobs import blob_id, blob_status, read, store
from .devnet import devnet
from .log import log_command
from .mounts import mount, status, umount
from .peers import health, init, peer
from .volumes import volume


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="walrusfs")
def main() -> None:
    """walrusfs: a verifiable filesystem on RedStuff-encoded storage peers."""
    tune_allocator()


# One module per command group (as borgbackup's archiver does); each defines its commands
# and main collects them here.
for _command in (audit, blob_id, blob_status, devnet, health, init, log_command, mount, peer, read, status, store,
                 umount, volume):
    main.add_command(_command)
