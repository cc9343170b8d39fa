"""Images from real registries and archives on the lab: Debian's docker-registry on the
workstation's lab bridge address, images built with umoci and pushed with skopeo
(tests/images/build.py). Pull + run by tag and by digest, the image's config, a multi-platform
index, whiteouts, a `docker save` archive, layers a host already has, pull = "hosts" with
credentials, auth and unknown-tag errors, prune keeping what is in use."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cantainer_agent import layout
from tests.images.build import docker_archive, manifest_of, push
from tests.images.registry import Registry
from tests.labcli import cantainer, cli, host_exec, host_path, ok, one_line_error, ps

pytestmark = pytest.mark.lab

CREDS = ("deployer", "pa55-for-the-lab-registry")


@pytest.fixture(scope="module")
def registries(lab, oci_layout, tmp_path_factory):
    """Two registries on the lab bridge address: `pub` (open) and `priv` (htpasswd basic auth)."""
    address = str(lab.load().gateway.ip)
    base = tmp_path_factory.mktemp("registries")
    with Registry(base / "pub", address) as pub, Registry(base / "priv", address, auth=CREDS) as priv:
        pub.digests = {"app": push(oci_layout, "app", pub.host, "team/app"),
                       "multi": push(oci_layout, "multi", pub.host, "team/app", all_platforms=True)}
        priv.digests = {"app": push(oci_layout, "app", priv.host, "team/app", creds=CREDS)}
        yield pub, priv


def inventory_with(lab, path: Path, sections: str) -> Path:
    text = lab.inventory_file.read_text()
    hosts_at = text.index("[[hosts]]")
    path.write_text(text[:hosts_at] + sections + "\n" + text[hosts_at:])
    return path


def password_file(path: Path, password: str) -> Path:
    path.write_text(password + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def inv(lab, cluster, registries, tmp_path_factory) -> Path:
    """The lab's inventory plus: pub is plain HTTP (workstation pulls); priv is pulled by the hosts."""
    pub, priv = registries
    base = tmp_path_factory.mktemp("inv")
    secret = password_file(base / "priv.password", CREDS[1])
    return inventory_with(lab, base / "inventory.toml", f"""
[registries."{pub.host}"]
insecure = true

[registries."{priv.host}"]
insecure = true
pull = "hosts"
username = "{CREDS[0]}"
password_file = "{secret}"
""")


def layer_dirs(lab, host: str) -> dict[str, dict]:
    """The host's layer store: diff_id hex -> layer.json."""
    root = host_path(lab, host, f"{layout.DATA_DIR}/images/layers")
    if not root.is_dir():
        return {}
    return {p.name: json.loads((p / "layer.json").read_text()) for p in root.iterdir() if (p / "fs").is_dir()}


def test_pull_and_run_by_tag_with_the_images_own_config(inv, registries):
    pub, _ = registries
    ok(cli(inv, "run", "--host", "h1", "-n", "10.40.0.0/24", "--name", "web", "-d", "--image",
           f"{pub.host}/team/app:app"))
    web = ps(inv)["web"]
    assert web["image_digest"] == pub.digests["app"] and web["ports"] == ["8080/tcp"] and web["user"] == "web"
    assert web["command"] == ["/app/entry.sh", "/usr/local/bin/busybox", "httpd", "-f", "-p", "8080"]
    table = ok(cli(inv, "ps"))
    assert "8080/tcp" in table and f"{pub.host}/team/app:app" in table
    # the image's user, workdir, env and HOME, for the command and for exec
    assert "uid=1000 gid=1000 groups=1000 82 pwd=/srv/www greeting=hello-from-image home=/home/web" in \
        ok(cli(inv, "logs", "web"))
    assert ok(cli(inv, "exec", "web", "--", "sh", "-c", "id -u; pwd")).split() == ["1000", "/srv/www"]
    # whiteouts: /etc/motd deleted by layer 2, /etc/apk made opaque
    assert ok(cli(inv, "exec", "web", "--", "ls", "/etc/apk")).split() == ["only-this"]
    assert cli(inv, "exec", "web", "--", "test", "-e", "/etc/motd").returncode == 1
    # busybox-static's httpd from layer 3 serves the overlay network: fetched from another host
    page = ok(cli(inv, "run", "--host", "h2", "-n", "10.40.0.0/24", "--name", "client", "--", "wget", "-qO-",
                  f"http://{web['ip']}:8080/"))
    assert page == "served by busybox-static in a layered image\n"
    ok(cli(inv, "rm", "client"))


def test_run_by_digest_with_entrypoint_user_workdir_and_env_overridden(inv, registries):
    pub, _ = registries
    out = ok(cli(inv, "run", "--host", "h2", "-n", "10.40.0.0/24", "--name", "pinned", "--image",
                 f"{pub.host}/team/app@{pub.digests['app']}", "--entrypoint", "", "--user", "root", "-w", "/tmp",
                 "-e", "GREETING=overridden", "--", "sh", "-c", "id -u; pwd; echo $GREETING"))
    assert out.split() == ["0", "/tmp", "overridden"]
    assert ps(inv)["pinned"]["image_digest"] == pub.digests["app"]
    out = ok(cli(inv, "run", "--host", "h2", "-n", "10.40.0.0/24", "--name", "cmd-only", "--image",
                 f"{pub.host}/team/app:app", "--", "echo", "replaced-cmd"))
    assert out.splitlines()[-1] == "replaced-cmd" and out.startswith("entry: args=echo replaced-cmd")
    ok(cli(inv, "rm", "pinned"))
    ok(cli(inv, "rm", "cmd-only"))


def test_a_multi_platform_index_runs_the_hosts_platform(inv, registries):
    pub, _ = registries
    assert ok(cli(inv, "run", "--host", "h1", "-n", "10.40.0.0/24", "--name", "multi", "--image",
                  f"{pub.host}/team/app:multi", "--", "cat", "/platform")) == "linux/amd64\n"
    assert ps(inv)["multi"]["image_digest"] == pub.digests["multi"]
    ok(cli(inv, "rm", "multi"))


def test_a_host_that_has_some_layers_receives_only_the_rest(lab, inv, registries, oci_layout):
    pub, _ = registries
    ok(cli(inv, "run", "--host", "h3", "-n", "10.40.0.0/24", "--name", "plain", "--", "true"))  # base image: 1 layer
    ok(cli(inv, "rm", "plain"))
    before = layer_dirs(lab, "h3")
    ok(cli(inv, "run", "--host", "h3", "-n", "10.40.0.0/24", "--name", "layered", "--image",
           f"{pub.host}/team/app:app", "--", "true"))
    after = layer_dirs(lab, "h3")
    digests = [layer["digest"] for layer in manifest_of(oci_layout, "app")["layers"]]
    received = {name: info for name, info in after.items() if name not in before}
    assert sorted(info["digest"] for info in received.values()) == sorted(digests[1:])  # not the base image's layer
    shared = [name for name, info in before.items() if info["diff_id"] in
              {a["diff_id"] for a in after.values()}]
    assert len(shared) == 1 and after[shared[0]] == before[shared[0]]  # the base image's layer, untouched
    ok(cli(inv, "rm", "layered"))


def test_load_and_run_a_docker_save_archive(inv, oci_layout, tmp_path):
    archive = docker_archive(oci_layout, "app", tmp_path / "shop.tar", "shop/app:v1")
    assert ok(cli(inv, "image", "load", str(archive))).startswith("loaded shop/app:v1 sha256:")
    out = ok(cli(inv, "run", "--host", "h2", "-n", "10.40.0.0/24", "--name", "loaded", "--image", "shop/app:v1",
                 "--", "cat", "/srv/www/index.html"))
    assert out.splitlines()[-1] == "served by busybox-static in a layered image"
    listing = ok(cli(inv, "image", "ls", "--hosts"))
    assert any(line.startswith("shop/app:v1") and "h2" in line for line in listing.splitlines()), listing
    ok(cli(inv, "rm", "loaded"))
    one_line_error(cli(inv, "run", "--host", "h2", "-n", "10.40.0.0/24", "--image", "shop/app:v2", "--", "true"),
                   "unknown image 'shop/app:v2'")


def test_pull_on_hosts_with_credentials_that_stay_out_of_logs_and_raft(lab, inv, registries):
    _, priv = registries
    assert ok(cli(inv, "run", "--host", "h3", "-n", "10.40.0.0/24", "--name", "hostpull", "--image",
                  f"{priv.host}/team/app:app", "--", "id", "-u")).splitlines()[-1] == "1000"
    assert ps(inv)["hostpull"]["image_digest"] == priv.digests["app"]
    from cantainer import images as legacy

    tags = legacy.cache_dir() / "tags.json"
    assert not tags.exists() or priv.host not in tags.read_text()  # the workstation did not pull it
    auth = host_path(lab, "h3", layout.registry_auth_file(priv.host))
    assert auth.stat().st_mode & 0o777 == 0o600
    for path in (f"{layout.LOG_DIR}/agent.log", f"{layout.DATA_DIR}/raft.journal", layout.CONFIG_FILE):
        assert CREDS[1].encode() not in host_path(lab, "h3", path).read_bytes(), path
    ok(cli(inv, "rm", "hostpull"))


def test_auth_failures_and_unknown_tags_are_one_line_errors_and_create_nothing(lab, inv, registries, tmp_path):
    pub, priv = registries
    before = set(ps(inv))
    wrong = inventory_with(lab, tmp_path / "wrong.toml", f"""
[registries."{priv.host}"]
insecure = true
username = "{CREDS[0]}"
password_file = "{password_file(tmp_path / 'wrong.password', 'not-the-password')}"
""")
    line = one_line_error(cli(wrong, "run", "--host", "h1", "-n", "10.40.0.0/24", "--image",
                              f"{priv.host}/team/app:app", "--", "true"), "authentication failed")
    assert "not-the-password" not in line
    anonymous = inventory_with(lab, tmp_path / "anon.toml",
                               f'[registries."{priv.host}"]\ninsecure = true\npull = "hosts"\n')
    one_line_error(cli(anonymous, "run", "--host", "h1", "-n", "10.40.0.0/24", "--image",
                       f"{priv.host}/team/app:app", "--", "true"), "needs credentials")
    one_line_error(cli(inv, "run", "--host", "h1", "-n", "10.40.0.0/24", "--image", f"{pub.host}/team/app:nope",
                       "--", "true"), "not found in registry")
    one_line_error(cli(inv, "run", "--host", "h1", "-n", "10.40.0.0/24", "--image",
                       f"{pub.host}/team/app@sha256:{'0' * 64}", "--", "true"), "not found in registry")
    assert set(ps(inv)) == before


def test_prune_keeps_the_layers_of_existing_containers(lab, inv, registries, oci_layout):
    app_layers = {layer["digest"] for layer in manifest_of(oci_layout, "app")["layers"]}
    assert ps(inv)["web"]["state"] == "running"  # from the first test, on h1
    out = ok(cli(inv, "image", "prune"))
    assert "h1: removed" in out and "h2: removed" in out
    kept = {info["digest"] for info in layer_dirs(lab, "h1").values()}
    assert app_layers <= kept
    ok(cli(inv, "rm", "-f", "web"))
    ok(cli(inv, "image", "prune"))
    assert layer_dirs(lab, "h1") == {}
    assert host_exec(lab, "h1", "ls", f"{layout.DATA_DIR}/images/layers").stdout.split() == []


def test_bad_run_options_are_one_line_errors(inv):
    one_line_error(cantainer("run", "--host", "h1", "-n", "10.40.0.0/24", "-w", "relative", "--", "true",
                             inventory=inv), "not an absolute path")
    one_line_error(cli(inv, "run", "--host", "h1", "-n", "10.40.0.0/24", "--user", "nobody-here", "--", "true"),
                   "nobody-here")
    one_line_error(cli(inv, "run", "--host", "h1", "-n", "10.40.0.0/24", "--image", "Bad:Name", "--", "true"),
                   "Bad:Name")


def test_the_agent_refuses_bad_image_requests_in_one_line(lab, inv):
    from cantainer_agent import protocol
    from tests.labcli import agent_call

    d = "sha256:" + "1" * 64
    good = {"reference": "x", "digest": d, "layers": [d], "config": {"cmd": ["true"], "diff_ids": [d]}}
    cases = [
        ("container.run", {"network": "10.41.0.0/24", "image": "alpine"}, "image must be an object"),
        ("container.run", {"network": "10.41.0.0/24", "image": {**good, "digest": "sha256:xyz"}}, "not sha256:"),
        ("container.run", {"network": "10.41.0.0/24", "image": {**good, "layers": []}}, "non-empty list"),
        ("container.run", {"network": "10.41.0.0/24", "image": {**good, "layers": ["sha256:" + "2" * 64]}},
         "do not match"),
        ("container.run", {"network": "10.41.0.0/24", "image": {**good, "config": {"diff_ids": [d]}}},
         "no Entrypoint or Cmd"),
        ("container.run", {"network": "10.41.0.0/24", "image": good}, "run again to push it"),
        ("container.run", {"network": "10.41.0.0/24", "image": good, "user": "a b"}, "user 'a b' is invalid"),
        ("image.status", {"layers": "sha256:x"}, "must be a list"),
        ("image.status", {"layers": ["../../etc"]}, "is not a digest"),
        ("image.import", {"digest": d, "diff_id": 7, "path": f"{layout.DATA_DIR}/images/incoming/none"},
         "image refused"),
        ("image.pull", {"reference": "alpine"}, "names no registry"),
    ]
    before = set(ps(inv))
    for method, params, fragment in cases:
        response = agent_call(lab, "h1", method, params)
        assert not response.ok and response.error.code == protocol.REJECTED, (method, params, response)
        assert fragment in response.error.message and "\n" not in response.error.message, response.error.message
    assert set(ps(inv)) == before
