#!/usr/bin/env bash
# Set up walrusfs on Debian/Ubuntu: system packages, then a virtual environment in .venv
# holding walrusfs (editable) with its test extras. Safe to run again: it only installs
# what is missing and reinstalls Python packages only when pyproject.toml or constraints.txt changed.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(fuse3 libfuse3-dev pkg-config build-essential libgmp-dev python3-venv python3-dev rsync)

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing system packages: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# reed-solomon-leopard ships wheels for CPython 3.10-3.12 only.
python=""
for candidate in python3.12 python3.11 python3.10 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
        "$candidate" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 12)))' 2>/dev/null; then
        python="$candidate"
        break
    fi
done
if [ -z "$python" ]; then
    echo "setup: walrusfs needs Python 3.10, 3.11 or 3.12 (reed-solomon-leopard has wheels for those only)" >&2
    exit 1
fi

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys' 2>/dev/null; then
    echo "setup: creating .venv with $($python --version)"
    rm -rf .venv
    "$python" -m venv .venv
fi

stamp=.venv/.walrusfs-installed
wanted=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
    echo "setup: installing walrusfs and its dependencies into .venv (a few minutes the first time)"
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
    # constraints.txt pins every dependency to what CI tested (py-libp2p changes behaviour
    # between minor versions); regenerate it with `pip freeze --exclude-editable`.
    .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[test]"
    echo "$wanted" > "$stamp"
fi
# mount(8) runs /sbin/mount.fuse.walrusfs for `mount -t fuse.walrusfs` and fstab lines of
# type fuse.walrusfs (it looks in /sbin only, and passes no PATH).
helper="$PWD/.venv/bin/mount.walrusfs"
if [ "$(readlink /sbin/mount.fuse.walrusfs 2>/dev/null)" != "$helper" ]; then
    echo "setup: linking /sbin/mount.fuse.walrusfs to $helper"
    as_root ln -sfn "$helper" /sbin/mount.fuse.walrusfs ||
        echo "setup: could not link /sbin/mount.fuse.walrusfs: mount -t fuse.walrusfs and fstab lines will not work" >&2
fi
echo "setup: ready ($(.venv/bin/walrusfs --version))"
