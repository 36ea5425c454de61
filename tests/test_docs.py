"""The README's two commands stay true: CI runs the same test command, the main job exists."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", text, re.S)][:2]


def test_readme_starts_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    main_job, tests = readme_commands()
    assert text.index(main_job) < 800, "the two commands belong at the top of the README"
    assert main_job.startswith("scripts/setup.sh && ")
    assert tests.startswith("scripts/setup.sh && ")
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command() -> None:
    _, tests = readme_commands()
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci.splitlines()


def test_main_job_runs_a_devnet_and_a_mount(tmp_path: Path) -> None:
    main_job, _ = readme_commands()
    script = main_job.split("&& ")[1].split()[1]
    assert (ROOT / script).is_file()
    result = subprocess.run(
        [sys.executable, str(ROOT / script), "--check", "--dir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sha256 matches" in result.stdout
    assert "unmounted and stopped the peers" in result.stdout
    assert not any(p.is_mount() for p in (tmp_path / "demo").iterdir())


def test_codec_demo_runs(tmp_path: Path) -> None:
    sample = tmp_path / "sample"
    sample.write_bytes(bytes(range(256)) * 4000)
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "damage_and_rebuild.py"), str(sample), "--shards", "10"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sha256 matches" in result.stdout
    assert "was corrupt" in result.stdout
