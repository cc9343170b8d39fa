"""Pure parts of the lab's full-OS hosts and of the sudo path: stable MACs, the image recipe's
identity, the sudo command line, the console tail of lab errors."""
from __future__ import annotations

import dataclasses
import shlex
import subprocess
from pathlib import Path

import pytest

from cantainer.inventory import Host
from cantainer.ssh import Connection
from lab import fullos, underlay
from lab.lab import Lab


def test_stable_mac_is_a_locally_administered_unicast_address_fixed_by_its_parts():
    mac = underlay.stable_mac("eth0", "cl-demo-h3")
    assert mac == underlay.stable_mac("eth0", "cl-demo-h3")  # the same on every boot
    octets = [int(part, 16) for part in mac.split(":")]
    assert len(octets) == 6 and octets[0] & 0b10 and not octets[0] & 0b1
    others = {underlay.stable_mac("eth0", f"cl-demo-h{n}") for n in range(1, 200)}
    assert len(others) == 199 and underlay.stable_mac("port", "cl-demo-h3") != mac


def test_a_changed_recipe_is_a_new_image_and_an_unknown_os_is_refused():
    recipe = fullos.recipe_for("debian")
    assert fullos.rootfs_path(recipe).name == f"debian-bookworm-{recipe.digest()}"
    assert fullos.recipe_for("debian").digest() == recipe.digest()
    more = dataclasses.replace(recipe, packages=recipe.packages + ("curl",))
    assert more.digest() != recipe.digest()
    assert dataclasses.replace(recipe, setup=recipe.setup[:1]).digest() != recipe.digest()
    with pytest.raises(fullos.FullOSError, match=r"--os 'plan9' is not known — use one of: debian"):
        fullos.recipe_for("plan9")


def host(user: str, become: bool) -> Host:
    return Host("h1", "10.0.0.1", 22, user, None, None, "yes", become, "python3", 10.0, None)


def test_sudo_command_line_keeps_ssh_connection_and_quotes_every_argument():
    argv = ["python3", "-c", "print('$HOME; rm -rf /')", "a b"]
    line = Connection(host("ops", True), None).command_line(argv)
    assert line == 'sudo -n -- env SSH_CONNECTION="$SSH_CONNECTION" ' + shlex.join(argv)
    assert Connection(host("root", True), None).command_line(argv) == shlex.join(argv)
    assert Connection(host("ops", False), None).command_line(argv) == shlex.join(argv)
    # what the login shell runs: the variable is expanded once, every argument arrives verbatim
    shell_line = line.replace("sudo -n -- ", "", 1).replace("python3", "printf '%s|'", 1)
    shown = subprocess.run(["sh", "-c", shell_line], capture_output=True, text=True,
                           env={"SSH_CONNECTION": "1.2.3.4 5 6.7.8.9 22", "PATH": "/usr/bin:/bin"})
    assert shown.stdout == "-c|print('$HOME; rm -rf /')|a b|"


def test_console_tail_shows_the_last_lines_since_the_last_boot(tmp_path, monkeypatch):
    monkeypatch.setenv("CANTAINER_LAB_ROOT", str(tmp_path))
    lab = Lab("unit")
    log = lab.host_dir("h1") / "console.log"
    log.parent.mkdir(parents=True)
    log.write_text("--- lab unit: h1 boots at 2026-01-01 00:00:00 UTC\nold boot\n"
                   "--- lab unit: h1 boots at 2026-01-01 00:01:00 UTC\n"
                   + "".join(f"\x1b[0;32m  OK  \x1b[0m line {n}\n" for n in range(12)))
    tail = lab.console_tail("h1")
    assert tail == f" — {log} ends: " + " | ".join(f"OK   line {n}" for n in range(4, 12))
    assert "old boot" not in tail and "\n" not in tail
    assert lab.console_tail("h2") == f" — {Path(tmp_path, 'unit', 'hosts', 'h2', 'console.log')} does not exist"


def test_a_full_os_hosts_resolver_is_the_workstations_lab_address_never_an_images_link(tmp_path):
    """An image's /etc/resolv.conf link (systemd-resolved's stub) is replaced, not followed out of the root."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/machine-id").write_text("")
    (root / "etc/passwd").write_text("".join(f"{user}:x:{n}:{n}::/h:/bin/sh\n" for n, user in
                                             enumerate(("root", fullos.SUDO_USER, fullos.PASSWORD_SUDO_USER))))
    for home in ("root", f"home/{fullos.SUDO_USER}", f"home/{fullos.PASSWORD_SUDO_USER}"):
        (root / home).mkdir(parents=True)
    outside = tmp_path / "outside-resolv.conf"
    outside.write_text("nameserver 9.9.9.9\n")
    (root / "etc/resolv.conf").symlink_to(outside)
    key = tmp_path / "key"
    key.write_text("private\n")
    key.with_suffix(".pub").write_text("public\n")
    fullos.configure_host(root, "h1", key, "ssh-ed25519 AAAA lab\n", "10.99.0.1")
    resolv = root / "etc/resolv.conf"
    assert not resolv.is_symlink() and resolv.read_text().endswith("nameserver 10.99.0.1\n")
    assert outside.read_text() == "nameserver 9.9.9.9\n"
