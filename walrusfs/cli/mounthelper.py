"""``mount.walrusfs``: the helper mount(8) runs for ``mount -t fuse.walrusfs`` and fstab lines.

mount(8) looks for /sbin/mount.fuse.walrusfs (scripts/setup.sh links it here) and calls it as
``mount.fuse.walrusfs VOLUME DIR [-sfnv] [-o OPTIONS] [-t TYPE]``. VOLUME is a volume name
(its keys in the config directory), a volume ID or a capability. The options become
``walrusfs mount`` options, and the mount starts in the background: the helper returns once
it serves (as mount(8) expects) or fails with the mount's error. For example, in /etc/fstab::

    photos  /srv/photos  fuse.walrusfs  committee=/etc/walrusfs/committee.toml,config=/etc/walrusfs,_netdev,allow_other  0  0
"""

from __future__ import annotations

import os
import re
import sys

#: OPTION=VALUE -> walrusfs mount option.
VALUED = {
    "committee": "--committee", "state": "--state", "chunk_size": "--chunk-size", "cache_size": "--cache-size",
    "startup_timeout": "--startup-timeout", "trash_time": "--trash-time", "log_file": "--log-file",
    "writer_key": "--writer-key", "uid": "--uid", "gid": "--gid", "umask": "--umask", "metrics": "--metrics",
}
#: OPTION -> walrusfs mount flag.
FLAGS = {"ro": "--read-only", "allow_other": "--allow-other", "keep_owners": "--keep-owners", "debug": "--debug"}
#: Options for mount(8), systemd or the kernel that mean nothing to walrusfs (FUSE mounts are
#: nodev and nosuid anyway).
IGNORED = {
    "rw", "defaults", "auto", "noauto", "_netdev", "nofail", "user", "nouser", "users", "owner", "group",
    "dev", "nodev", "suid", "nosuid", "exec", "noexec", "atime", "noatime", "relatime", "norelatime",
    "strictatime", "nostrictatime", "diratime", "nodiratime", "lazytime", "nolazytime", "async", "loud",
    "silent", "default_permissions",
}
USAGE = "usage: mount.walrusfs VOLUME DIR [-sfnv] [-o OPTION[,OPTION...]] [-t fuse.walrusfs]"


class HelperError(Exception):
    """Arguments mount(8) should not have passed; exit 1 with the message."""


def translate(argv: list[str]) -> tuple[list[str] | None, dict[str, str]]:
    """The ``walrusfs mount`` arguments and extra environment for a helper's argv (None: -f, pretend)."""
    positional: list[str] = []
    options: list[str] = []
    sloppy = fake = False
    args = iter(argv)
    for arg in args:
        if arg in ("-o", "-t", "-N"):
            value = next(args, None)
            if value is None:
                raise HelperError(f"{arg} needs a value")
            if arg == "-o":
                options += [o for o in value.split(",") if o]
        elif arg.startswith("-o") and len(arg) > 2:
            options += [o for o in arg[2:].split(",") if o]
        elif arg.startswith("-") and len(arg) > 1:
            for flag in arg[1:]:
                if flag not in "sfnvrw":
                    raise HelperError(f"unknown flag -{flag}")
                sloppy |= flag == "s"
                fake |= flag == "f"
                if flag == "r":
                    options.append("ro")
        else:
            positional.append(arg)
    if len(positional) != 2:
        raise HelperError(USAGE)
    source, target = positional
    secret = source.startswith("walrusfs-")
    command = ["mount", target, "--cap" if secret else "--volume", source, "--background"]
    if not secret and re.match(r"^[A-Za-z0-9._:@-]{1,200}$", source):
        # The mount table then shows fstab's source, so mount -a knows the line is mounted. A
        # capability is a secret, and the mount table is world-readable: it shows "walrusfs".
        command += ["--fsname", source]
    env: dict[str, str] = {}
    for option in options:
        name, has_value, value = option.partition("=")
        if name in VALUED and has_value:
            command += [VALUED[name], value]
        elif name == "config" and has_value:
            env["WALRUSFS_CONFIG_DIR"] = value
        elif name in FLAGS and not has_value:
            command.append(FLAGS[name])
        elif name in IGNORED or name.startswith("x-") or name == "comment":
            continue
        elif not sloppy:
            raise HelperError(f"unknown option {option!r} (walrusfs takes {', '.join(sorted([*VALUED, 'config']))}"
                              f"=VALUE and {', '.join(sorted(FLAGS))})")
    return (None if fake else command), env


def main(argv: list[str] | None = None) -> None:
    """Mount as mount(8) asks; exits with the mount's outcome."""
    try:
        command, env = translate(sys.argv[1:] if argv is None else argv)
    except HelperError as exc:
        print(f"mount.walrusfs: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    if command is None:
        raise SystemExit(0)
    os.environ.update(env)
    # mount(8) passes no PATH; fusermount3 is found through it.
    os.environ.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    from . import main as walrusfs

    walrusfs.main(command, prog_name="walrusfs")


if __name__ == "__main__":
    main()
