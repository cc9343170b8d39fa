"""`cantainer up` vs Ansible doing the same work on lab hosts.

`measure(quick)` returns rows {"name", "value", "unit": "s", "anchor", "anchor_value", "ratio"} with
ratio = anchor_value / value (> 1: cantainer is faster). Needs root (the lab). Run alone with
`sudo .venv/bin/python -m bench.up_vs_ansible [--quick]`.

What each side does, per host count N (a fresh lab `bupN`, removed afterwards):

* cantainer: `.venv/bin/cantainer up INVENTORY` — connect, probe, push the bundle (kept as the zip it is
  when it carries the host Python's bytecode, as on lab hosts; else unpacked), write
  config + secret, start the agent detached (bootstrap node first), wait until every agent reports a
  leader and itself as an up member.
* Ansible (ansible-core from PyPI in bench/.ansible-venv, forks = N, pipelining, ControlPersist,
  gather_facts off, the lab's key and known_hosts with host-key checking on): one playbook that does
  the same steps into the same paths — `command: install -d` (creates=), `copy` the same bundle
  (the one `up` chooses for these hosts: `lab_bundle()`) to the bundle's path — or, for a bundle `up`
  would unpack, `unarchive` it there (creates=; needs `unzip` on the host) — `copy`
  the secret and the per-host agent.json that cantainer's `plan.desired_config` would write, then start
  the real agent with `python3 BUNDLE_DIR run --config /etc/cantainer/agent.json --daemon` (which
  returns once the agent is ready and, for joiners, has joined) on every host at once, each only
  when no agent runs yet (the configs are `up`'s: the first `voters` hosts found the cluster
  together, the rest join it). Ansible does not run the final health check.
* cold: nothing of cantainer on the hosts (`cantainer down --purge` between runs, untimed); no SSH
  control masters alive before the timed run (they are closed with `ssh -O exit` afterwards).
* re-run: the same command again right after a cold run (everything in place, agents running);
  Ansible's control masters are closed first, so both sides pay their SSH connections.

Timings: time.monotonic around the subprocess. quick: 3 hosts, one run each; full: 3, 10, 20 hosts,
median of 3 cold runs, re-run on 20 hosts (median of 3), and one cold `up` of 100 hosts (no anchor).
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CANTAINER = REPO / ".venv" / "bin" / "cantainer"
ANSIBLE_VENV = REPO / "bench" / ".ansible-venv"
ANSIBLE_PLAYBOOK = ANSIBLE_VENV / "bin" / "ansible-playbook"

PLAYBOOK = """\
- hosts: all
  gather_facts: false
  vars:
    bundle_dir: "/var/lib/cantainer/bundles/cantainer_agent-{{ bundle_digest[:16] }}"
    start_agent: >-
      pid=$(cat /run/cantainer/agent.pid 2>/dev/null) &&
      grep -q cantainer_agent /proc/$pid/cmdline 2>/dev/null && echo running && exit 0;
      python3 {{ bundle_dir }} run --config /etc/cantainer/agent.json --daemon
  tasks:
    - name: directories
      command: install -d -m 700 /etc/cantainer /var/lib/cantainer /var/lib/cantainer/bundles /var/log/cantainer
      args:
        creates: /var/lib/cantainer/bundles
    - name: copy the agent bundle (a zip the host runs as it is, as `up` keeps it)
      copy:
        src: "{{ bundle_file }}"
        dest: "{{ bundle_dir }}"
        mode: "0644"
      when: bundle_zipped | bool
    - name: copy the agent bundle to unpack it
      copy:
        src: "{{ bundle_file }}"
        dest: "/var/lib/cantainer/bundles/.{{ bundle_digest }}.zip"
        mode: "0600"
      when: not (bundle_zipped | bool)
    - name: its directory
      command: install -d -m 755 {{ bundle_dir }}
      args:
        creates: "{{ bundle_dir }}"
      when: not (bundle_zipped | bool)
    - name: unpack it
      unarchive:
        src: "/var/lib/cantainer/bundles/.{{ bundle_digest }}.zip"
        dest: "{{ bundle_dir }}"
        remote_src: true
        creates: "{{ bundle_dir }}/__main__.py"
      when: not (bundle_zipped | bool)
    - name: cluster secret
      copy:
        src: "{{ secret_file }}"
        dest: /etc/cantainer/secret
        mode: "0600"
    - name: agent config
      copy:
        src: "{{ config_dir }}/{{ inventory_hostname }}.json"
        dest: /etc/cantainer/agent.json
        mode: "0600"
    - name: start the agents (all at once; the initial voters form the cluster, the rest join it)
      shell: "{{ start_agent }}"
      register: started
      changed_when: "'running' not in started.stdout"
"""


class BenchError(RuntimeError):
    pass


def _run(argv: list[str], timeout: float = 600, env: dict | None = None) -> float:
    """Run argv, return its wall time; raise with its output on failure."""
    started = time.monotonic()
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            timeout=timeout, env=env)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        tail = result.stdout.decode(errors="replace")[-3000:]
        raise BenchError(f"{' '.join(map(str, argv[:3]))} … exited {result.returncode}:\n{tail}")
    return elapsed


def ensure_ansible() -> Path:
    """ansible-core from PyPI in its own virtualenv (bench/.ansible-venv, gitignored)."""
    if not ANSIBLE_PLAYBOOK.exists():
        subprocess.run([sys.executable, "-m", "venv", str(ANSIBLE_VENV)], check=True)
        subprocess.run([str(ANSIBLE_VENV / "bin" / "pip"), "install", "-q", "ansible-core"], check=True)
    return ANSIBLE_PLAYBOOK


class AnsibleSide:
    """Inventory, config, playbook and per-host files for Ansible, in one temp dir."""

    def __init__(self, inventory_path: Path, workdir: Path, bundle) -> None:
        from cantainer.inventory import load_inventory
        from cantainer.plan import desired_config, founding_voters
        from cantainer.secret import load_or_create_secret

        inventory = load_inventory(inventory_path)
        self.workdir = workdir
        self.control_dir = workdir / "cp"
        self.control_dir.mkdir(mode=0o700)
        config_dir = workdir / "configs"
        config_dir.mkdir()
        secret = load_or_create_secret(inventory.cluster.secret_file)
        secret_file = workdir / "secret"
        secret_file.write_bytes(secret + b"\n")
        bundle_file = workdir / "bundle.zip"
        bundle_file.write_bytes(bundle.data)
        addresses = {h.name: h.underlay_address or h.address for h in inventory.hosts}
        founders = founding_voters(inventory, inventory.hosts[0].name)  # the configs `up` writes
        for host in inventory.hosts:
            config = desired_config(inventory, host, addresses, bundle.digest, bootstrap=host.name in founders,
                                    initial_voters=founders)
            (config_dir / f"{host.name}.json").write_text(json.dumps(config, indent=1) + "\n")
        defaults = inventory.hosts[0]
        lines = ["[all]"] + [f"{h.name} ansible_host={h.address}" for h in inventory.hosts]
        lines += ["", "[all:vars]", f"ansible_user={defaults.user}",
                  f"ansible_ssh_private_key_file={defaults.identity_file}",
                  "ansible_python_interpreter=/usr/bin/python3",
                  f"bundle_file={bundle_file}", f"bundle_digest={bundle.digest}",
                  f"bundle_zipped={bundle.magic is not None}",
                  f"secret_file={secret_file}", f"config_dir={config_dir}"]
        (workdir / "hosts.ini").write_text("\n".join(lines) + "\n")
        (workdir / "site.yml").write_text(PLAYBOOK)
        (workdir / "ansible.cfg").write_text(
            "[defaults]\n"
            f"forks = {len(inventory.hosts)}\n"
            f"inventory = {workdir / 'hosts.ini'}\n"
            "host_key_checking = True\n"
            "retry_files_enabled = False\n"
            f"local_tmp = {workdir / 'ansible-local'}\n"
            "[ssh_connection]\n"
            "pipelining = True\n"
            f"ssh_args = -o ControlMaster=auto -o ControlPersist=60s -o UserKnownHostsFile={defaults.known_hosts}"
            " -o StrictHostKeyChecking=yes\n"
            f"control_path_dir = {self.control_dir}\n"
            "control_path = %(directory)s/%%C\n"
        )
        self.env = {**os.environ, "ANSIBLE_CONFIG": str(workdir / "ansible.cfg"),
                    "HOME": os.environ.get("HOME", "/root")}

    def play(self) -> float:
        return _run([str(ANSIBLE_PLAYBOOK), str(self.workdir / "site.yml")], env=self.env)

    def close_masters(self) -> None:
        """End ControlPersist masters through their sockets (ssh -O exit), never by process name."""
        for socket in self.control_dir.iterdir():
            subprocess.run(["ssh", "-o", f"ControlPath={socket}", "-O", "exit", "x"],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=10)


def _purge(inventory: Path) -> None:
    _run([str(CANTAINER), "down", "--purge", "-i", str(inventory)], timeout=300)


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _row(name: str, value: float, anchor: str, anchor_value: float) -> dict:
    return {"name": name, "value": round(value, 3), "unit": "s", "anchor": anchor,
            "anchor_value": round(anchor_value, 3), "ratio": round(anchor_value / value, 2)}


def lab_bundle():
    """The bundle `up` pushes to lab hosts, chosen from their facts as `up` does (they run this
    machine's /usr/bin/python3)."""
    from cantainer import remote
    from cantainer.bundle import Platform, build_bundle

    probe = remote.ProbeResult.parse(subprocess.run(["/usr/bin/python3", "-c", remote.PROBE, *["/nonexistent"] * 5],
                                                    capture_output=True, text=True, check=True).stdout)
    return build_bundle(Platform(probe.machine, probe.python[:2], probe.bytecode))


def measure_hosts(count: int, runs: int, rerun: bool, log=print) -> list[dict]:
    from bench.lab_cluster import lab_name
    from lab.lab import Lab

    ensure_ansible()
    bundle = lab_bundle()
    lab = Lab(lab_name(f"bup{count}", f"u{count}"))
    workdir = Path(tempfile.mkdtemp(prefix="bup-"))
    try:
        lab.down()  # a leftover of a crashed run
        inventory = lab.up(count)
        ansible = AnsibleSide(inventory, workdir, bundle)
        ours, theirs, ours_re, theirs_re = [], [], [], []
        for _ in range(runs):
            ours.append(_run([str(CANTAINER), "up", str(inventory)], timeout=600))
            log(f"  cantainer up cold, {count} hosts: {ours[-1]:.2f} s")
            if rerun:
                ours_re.append(_run([str(CANTAINER), "up", str(inventory)], timeout=600))
                log(f"  cantainer up re-run, {count} hosts: {ours_re[-1]:.2f} s")
            _purge(inventory)
            theirs.append(ansible.play())
            log(f"  ansible cold, {count} hosts: {theirs[-1]:.2f} s")
            if rerun:
                ansible.close_masters()
                theirs_re.append(ansible.play())
                log(f"  ansible re-run, {count} hosts: {theirs_re[-1]:.2f} s")
            ansible.close_masters()
            _purge(inventory)
        rows = [_row(f"up cold {count} hosts", _median(ours), f"ansible {count} hosts", _median(theirs))]
        if rerun:
            rows.append(_row(f"up re-run {count} hosts (nothing to do)", _median(ours_re),
                             f"ansible re-run {count} hosts", _median(theirs_re)))
        return rows
    finally:
        try:
            if (workdir / "cp").is_dir():
                for socket in (workdir / "cp").iterdir():
                    subprocess.run(["ssh", "-o", f"ControlPath={socket}", "-O", "exit", "x"],
                                   stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
        finally:
            lab.down()
            shutil.rmtree(workdir, ignore_errors=True)


def measure_many(count: int, log=print) -> list[dict]:
    """`up` cold on *count* lab hosts, once (no anchor: Ansible would take many minutes here)."""
    from bench.lab_cluster import lab_name
    from lab.lab import Lab

    lab = Lab(lab_name(f"bup{count}", f"u{count}"))
    try:
        lab.down()
        inventory = lab.up(count)
        elapsed = _run([str(CANTAINER), "up", str(inventory)], timeout=900)
        log(f"  cantainer up cold, {count} hosts: {elapsed:.2f} s")
        _purge(inventory)
    finally:
        lab.down()
    return [{"name": f"up cold {count} hosts (one run)", "value": round(elapsed, 3), "unit": "s", "anchor": None,
             "anchor_value": None, "ratio": None}]


def measure(quick: bool) -> list[dict]:
    """Rows for `python -m bench`: up cold on 3 (quick) or 3/10/20 hosts, and the re-run on 3 or 20;
    the full run also brings 100 hosts up once."""
    if quick:
        return measure_hosts(3, runs=1, rerun=True)
    rows: list[dict] = []
    for count in (3, 10):
        rows += measure_hosts(count, runs=3, rerun=False)
    rows += measure_hosts(20, runs=3, rerun=True)
    rows += measure_many(100)
    return rows


if __name__ == "__main__":
    print(json.dumps(measure("--quick" in sys.argv[1:]), indent=1))
