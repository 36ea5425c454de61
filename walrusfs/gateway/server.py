"""Running the gateway: one libp2p client host and hypercorn's trio worker in one trio loop."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from p2p.host import configure_logging, running_host

from ..client.blob import Client
from ..core.committee import Committee
from .app import Gateway, Settings
from .metrics import GatewayMetrics

log = logging.getLogger("walrusfs.gateway")


def hypercorn_config(bind: str) -> Config:
    """Hypercorn's settings for the gateway: no access log (a capability may be in a path), our Server header."""
    config = Config()
    config.bind = [bind]
    config.accesslog = None
    config.errorlog = logging.getLogger("walrusfs.gateway.server")
    config.include_server_header = False
    # In-flight responses get this long to finish after SIGTERM or Ctrl-C.
    config.graceful_timeout = 5.0
    return config


async def run(committee: Committee, authority: Any, settings: Settings, bind: str,
              ready: Callable[[list[str]], None], metrics: GatewayMetrics | None = None) -> None:
    """Serve until SIGINT or SIGTERM; ``ready`` gets the bound URLs once requests are accepted.

    With ``metrics``, every exchange is counted there (a metrics server started by the caller shows them).
    """
    configure_logging(logging.CRITICAL)  # the client reports unreachable peers itself
    stop = trio.Event()

    async def signals() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
            async for _ in received:
                stop.set()
                return

    async with running_host(os.urandom(32)) as host:
        # Streams to peers are pooled: a gateway makes many small calls, like a mount.
        client = Client(host, committee, reuse_streams=True, authority=authority)
        app = Gateway(client, settings)
        served = metrics.wrap(app) if metrics is not None else app
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(signals)

                async def serving(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
                    await serve(served, hypercorn_config(bind), shutdown_trigger=stop.wait,  # type: ignore[arg-type]
                                task_status=task_status)
                    nursery.cancel_scope.cancel()

                ready(await nursery.start(serving))
        finally:
            if client.pool is not None:
                await client.pool.aclose()


def run_blocking(committee: Committee, authority: Any, settings: Settings, bind: str,
                 ready: Callable[[list[str]], None], metrics: GatewayMetrics | None = None) -> None:
    """``run`` under ``trio.run``."""
    trio.run(partial(run, committee, authority, settings, bind, ready, metrics))
