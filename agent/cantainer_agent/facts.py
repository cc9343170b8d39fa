"""A host's facts for `cantainer up`, read the same way by two callers.

* `up`'s probe sends this file's text as ``python3 -c`` (argv: pid file, config file, bundles dir,
  members file, secret file), so it must stay standalone: stdlib only, nothing from this package.
* A running agent answers the API's ``facts`` with ``read(...)`` on the same paths, which saves `up`'s
  re-run a Python start per host. It cannot know ``ssh_server_address`` (None): `up` asks an agent
  only for hosts whose underlay address the inventory names, and takes its answer only when it runs
  under the interpreter the inventory names (``interpreter``: the command it was started as).

The document is ``cantainer.remote.ProbeResult``'s input; both callers must give the same answer.
"""
import json
import os
import re
import sys

try:  # the running interpreter's bytecode magic without importlib.util's imports (~2 ms of a probe)
    from _frozen_importlib_external import MAGIC_NUMBER
except ImportError:  # not CPython
    from importlib.util import MAGIC_NUMBER

# Where the dynamic loader's cache names the library's file (glibc: /etc/ld.so.cache).
LOADER_CACHE = "/etc/ld.so.cache"
_CACHED_NFTABLES = re.compile(rb"/[^\0]*/libnftables\.so\.1(?=\0)")


def _read(path, size=-1):
    try:
        with open(path, "rb") as handle:
            return handle.read(size)
    except OSError:
        return None


def _agent_pid(pid_file):
    raw = _read(pid_file)
    try:
        pid = int(raw.split()[0])
        cmdline = _read(f"/proc/{pid}/cmdline") or b""
    except (AttributeError, IndexError, ValueError):
        return None
    return pid if b"cantainer_agent" in cmdline else None


def _nftables(loader_cache=LOADER_CACHE):
    """None if libnftables.so.1 is there for the agent to load, else why not. Read from the loader's
    cache — a file it names that starts as a shared object does — rather than loaded (ctypes is ~4 ms of
    a probe). Without a cache (not glibc) the library is loaded. The agent loads it for real at its start,
    and refuses to run without it."""
    cache = _read(loader_cache)
    if cache is None:
        import ctypes

        try:
            ctypes.CDLL("libnftables.so.1")
        except OSError as error:
            return str(error)
        return None
    for path in _CACHED_NFTABLES.findall(cache):
        if (_read(path.decode(errors="replace"), 4) or b"").startswith(b"\x7fELF"):
            return None
    return f"libnftables.so.1: no such library in the dynamic loader's cache ({loader_cache})"


def _sha256(data):
    import hashlib  # only a host with a secret: a fresh one has none (~2 ms of a probe)

    return hashlib.sha256(data).hexdigest()


def _bundles(bundles_dir):
    if not os.path.isdir(bundles_dir):
        return []
    return sorted(entry.name for entry in os.scandir(bundles_dir) if not entry.name.endswith(".partial") and (
        entry.is_file() or os.path.isfile(os.path.join(entry.path, ".complete"))))


def read(pid_file, config_file, bundles_dir, members_file, secret_file, ssh_connection=None, nftables_loaded=False):
    """The facts document (JSON-able dict). *ssh_connection* is $SSH_CONNECTION as the probe sees it;
    *nftables_loaded*: the caller is an agent, which runs only with libnftables loaded."""
    config = _read(config_file)
    secret = _read(secret_file)
    conn = (ssh_connection or "").split()
    uname = os.uname()  # what `platform` would say, without its import (~5 ms of a probe's ~20)
    return {
        "python": list(sys.version_info[:3]),
        "bytecode": MAGIC_NUMBER.hex(),  # the bundle carries bytecode only for this magic
        "interpreter": getattr(sys, "orig_argv", [None])[0],  # the command it was started as: `python`
        "machine": uname.machine,
        "kernel": uname.release,
        "hostname": uname.nodename,
        "systemd": os.path.isdir("/run/systemd/system"),
        "bundles": _bundles(bundles_dir),
        "secret_sha256": _sha256(secret) if secret else None,
        "config": json.loads(config) if config else None,
        "has_state": os.path.exists(members_file),
        "agent_pid": _agent_pid(pid_file),
        "ssh_server_address": conn[2] if len(conn) == 4 else None,
        "nftables_error": None if nftables_loaded else _nftables(),
    }


if __name__ == "__main__":
    print(json.dumps(read(*sys.argv[1:6], ssh_connection=os.environ.get("SSH_CONNECTION"))))
