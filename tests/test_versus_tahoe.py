"""The Tahoe benchmark's pure parts: its options and the Tahoe node directories it writes (no Tahoe is installed)."""

from __future__ import annotations

import configparser
import importlib.util
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "versus_tahoe", Path(__file__).resolve().parent.parent / "benchmarks" / "versus_tahoe.py")
assert _SPEC is not None and _SPEC.loader is not None
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)

FURL = "pb://abc@tcp:127.0.0.1:4000/introducer"


def test_options_have_the_issue_defaults_and_refuse_zero() -> None:
    args = bench.parse_args([])
    assert (args.size_mib, args.files, args.rounds, args.skip_install) == (64, 1000, 3, False)
    args = bench.parse_args(["--size-mib", "8", "--files", "10", "--rounds", "1", "--skip-install"])
    assert (args.size_mib, args.files, args.rounds, args.skip_install) == (8, 10, 1, True)
    with pytest.raises(SystemExit):
        bench.parse_args(["--rounds", "0"])


def _cfg(files: dict[str, str]) -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read_string(files["tahoe.cfg"])
    return parser


def test_storage_and_client_nodes_are_3_of_7_and_listen_on_localhost_only() -> None:
    storage = bench.node_files("storage", "storage-0", 4001, None, FURL)
    cfg = _cfg(storage)
    assert dict(cfg["client"]) == {"shares.needed": "3", "shares.happy": "7", "shares.total": "7"}
    assert cfg["storage"]["enabled"] == "true"
    assert cfg["node"]["tub.port"] == "tcp:4001:interface=127.0.0.1"
    assert cfg["node"]["tub.location"] == "tcp:127.0.0.1:4001"
    assert cfg["node"]["web.port"] == ""
    assert FURL in storage["private/introducers.yaml"] and "tahoe-client.tac" in storage

    client = bench.node_files("client", "client", None, 5000, FURL)
    cfg = _cfg(client)
    assert cfg["storage"]["enabled"] == "false"
    assert (cfg["node"]["tub.port"], cfg["node"]["tub.location"]) == ("disabled", "disabled")
    assert cfg["node"]["web.port"] == "tcp:5000:interface=127.0.0.1"

    introducer = bench.node_files("introducer", "introducer", 4000)
    assert "tahoe-introducer.tac" in introducer and "client" not in _cfg(introducer)


def test_node_files_refuse_incomplete_nodes() -> None:
    with pytest.raises(ValueError):
        bench.node_files("storage", "s", 4001)  # no introducer
    with pytest.raises(ValueError):
        bench.node_files("introducer", "i")  # no port
    with pytest.raises(ValueError):
        bench.node_files("helper", "h", 4001, None, FURL)
