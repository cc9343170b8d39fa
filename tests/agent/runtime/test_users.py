"""--user resolved in the image's /etc/passwd and /etc/group, runc's way (pure)."""
from __future__ import annotations

import pytest

from cantainer_agent.runtime.users import ExecUser, UserError, read_small, resolve

PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:2:2:daemon:/sbin:/sbin/nologin
# a comment
web:x:1000:1000:web:/home/web:/bin/sh
broken line
"""
GROUP = """root:x:0:root
bin:x:1:root,bin,daemon
www-data:x:82:web
web:x:1000:
staff:x:50:web,other
"""


@pytest.mark.parametrize("spec, expected", [
    ("", ExecUser(0, 0, (0, 1), "/root")),
    ("root", ExecUser(0, 0, (0, 1), "/root")),
    ("web", ExecUser(1000, 1000, (82, 50), "/home/web")),
    ("1000", ExecUser(1000, 1000, (82, 50), "/home/web")),
    ("4242", ExecUser(4242, 0, (), "/")),  # numeric, not in passwd: allowed, as in docker
    ("web:staff", ExecUser(1000, 50, (), "/home/web")),  # explicit group: no supplementary groups
    ("web:77", ExecUser(1000, 77, (), "/home/web")),
    ("4242:4343", ExecUser(4242, 4343, (), "/")),
    ("daemon", ExecUser(2, 2, (1,), "/sbin")),
])
def test_resolve(spec, expected):
    assert resolve(spec, PASSWD, GROUP) == expected


@pytest.mark.parametrize("spec, fragment", [("nobody", "not in the image's /etc/passwd"),
                                             ("web:nogroup", "not in the image's /etc/group"),
                                             ("web:", "empty group")])
def test_unknown_names(spec, fragment):
    with pytest.raises(UserError, match=fragment):
        resolve(spec, PASSWD, GROUP)


def test_an_image_without_passwd_runs_numeric_users_and_root():
    assert resolve("", "", "") == ExecUser(0, 0, (), "/")
    assert resolve("33:33", "", "") == ExecUser(33, 33, (), "/")
    with pytest.raises(UserError):
        resolve("web", "", "")


def test_read_small_reads_regular_files_only(tmp_path):
    import os

    (tmp_path / "passwd").write_text(PASSWD)
    assert read_small(str(tmp_path / "passwd")) == PASSWD
    os.mkfifo(tmp_path / "fifo")  # an image cannot bring one (extraction skips them), but never block on it
    assert read_small(str(tmp_path / "fifo")) == ""
    assert read_small(str(tmp_path / "missing")) == ""
    assert read_small(str(tmp_path)) == ""
