"""The agent becomes ready without importing pyroute2 (~0.15 s of CPU of its ~0.3 s of imports): the
overlay package exports what needs netlink lazily, and the reconcile thread loads it once the cluster
has a network (controllers/overlay.no_overlay). dnslib and tarfile wait for the first packet and the
first image. `cryptography` is not imported at all (the raft transport's Fernet is on libcrypto)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

AGENT = Path(__file__).resolve().parents[2] / "agent"


def imported_after(code: str) -> set[str]:
    probe = f"import sys; {code}; print(' '.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                            env={"PYTHONPATH": str(AGENT), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_starting_the_agent_imports_no_netlink_library():
    modules = imported_after("import cantainer_agent.__main__, cantainer_agent.daemon.process, "
                             "cantainer_agent.daemon.agent")
    assert not {m for m in modules if m.split(".")[0] in ("pyroute2", "asyncio", "dnslib", "tarfile", "cryptography")}
    assert "cantainer_agent.runtime.init" not in modules  # the container init (and seccomp, users): the zygote's
    assert "cantainer_agent.overlay.plan" not in modules  # the overlay's planner comes with its first network


def test_the_launcher_forks_before_it_imports_the_agent(tmp_path):
    """`run --daemon`: the launcher loads the config and detaches; the daemon imports the agent after
    the forks (a launcher that imported it first made the daemon copy-on-write that whole heap)."""
    config = tmp_path / "agent.json"
    config.write_text(json.dumps({"cluster": "c", "node": "h1", "address": "10.0.0.1", "bootstrap": True,
                                  "secret_file": str(tmp_path / "secret"), "log_dir": str(tmp_path)}))
    modules = imported_after("import cantainer_agent.daemon.detach as d; "
                             "d.detach = lambda log_file, daemon: print(' '.join(sorted(sys.modules))) or sys.exit(0); "
                             f"from cantainer_agent.__main__ import main; main(['run', '--config', {str(config)!r}, "
                             "'--daemon'])")
    assert "cantainer_agent.config" in modules  # it did get as far as detaching ...
    assert not {"cantainer_agent.daemon.process", "cantainer_agent.daemon.agent", "cantainer_agent.consensus",
                "pysyncobj", "logging"} & modules  # ... with none of the agent loaded
    assert "argparse" not in modules  # the command lines `up` and the unit use are read by hand


def test_the_hand_read_command_lines_mean_what_argparse_reads_in_them():
    from cantainer_agent.__main__ import parser, plain_run

    for argv in (["run", "--config", "/etc/cantainer/agent.json", "--daemon"], ["run", "--config", "a.json"]):
        args = parser().parse_args(argv)
        assert plain_run(argv) == (args.config, args.daemon)
    # anything else is argparse's: other orders, options, help, tools, missing or option-like values
    for argv in (["run", "--daemon", "--config", "a.json"], ["run", "--config=a.json"], ["run", "--config"],
                 ["run", "--config", "--daemon"], ["run", "--config", "a.json", "--daemon", "x"],
                 ["run", "--config", "a.json", "-h"], ["version"], ["logs", "c1"], []):
        assert plain_run(argv) is None, argv


def test_the_overlay_still_offers_everything_and_loads_netlink_on_first_use():
    modules = imported_after("from cantainer_agent.overlay import attach_container, OverlayReconciler, observe")
    assert "pyroute2" in modules and "cantainer_agent.overlay.veth" in modules


def test_the_dns_server_and_the_image_store_load_their_libraries_on_first_use():
    modules = imported_after("from cantainer_agent.dns.server import _parse; "
                             "_parse(bytes.fromhex('abcd01000001000000000000016102636e0000010001')); "
                             "from cantainer_agent.runtime.images import extract_tarball; import io; "
                             "extract_tarball(io.BytesIO(bytes(1024)), '/nonexistent')")
    assert {"dnslib", "tarfile"} <= modules
