"""volume: creating and listing volumes."""

from __future__ import annotations

import json
import sys

import click

from .common import (
    EXIT_FAILED,
    Failure,
    json_option,
)


@click.group()
def volume() -> None:
    """Volumes: namespaces owned by a key kept in your config directory."""


@volume.command("create")
@click.argument("name")
@json_option
def volume_create(name: str, as_json: bool) -> None:
    """Make a new volume NAME and print its ID (share the ID for read-only mounts)."""
    from ..mount.volumes import VolumeError, config_dir, create_volume

    try:
        made = create_volume(name)
    except VolumeError as exc:
        raise click.UsageError(str(exc)) from None
    if as_json:
        click.echo(json.dumps({"name": made.name, "volumeId": made.volume_id,
                               "keyFile": str(config_dir() / "volumes" / f"{name}.key")}))
    else:
        click.echo(f"volume {name}: {made.volume_id}")
        click.echo(f"mount it with: walrusfs mount DIR --volume {name}")


@volume.command("list")
@json_option
def volume_list(as_json: bool) -> None:
    """List the volumes whose keys you hold."""
    from ..mount.volumes import VolumeError, list_volumes

    problems: list[str] = []
    try:
        volumes = list_volumes(problems)
    except VolumeError as exc:
        raise Failure(str(exc)) from None
    if as_json:
        click.echo(json.dumps([{"name": v.name, "volumeId": v.volume_id} for v in volumes]))
    for v in volumes if not as_json else ():
        click.echo(f"{v.name}  {v.volume_id}")
    for problem in problems:
        click.echo(f"walrusfs: skipped unreadable key file of volume {problem}", err=True)
    if problems:
        sys.exit(EXIT_FAILED)
