"""The README's first command keeps working: the demo runs end to end and cleans up."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from pyroute2 import netns

from tests.conftest import LAB_NAME, require_root
from tests.pingout import all_answered

pytestmark = pytest.mark.lab
DEMO_LAB = f"{LAB_NAME[:6]}d"  # not the README's "demo": two suites side by side must not share a lab


def test_demo_pings_across_hosts_applies_a_stack_keeps_a_service_through_a_crash_and_cleans_up():
    require_root()
    # a newcomer's environment, plus the suite's own settings (image sources, cache, offline)
    settings = {key: value for key, value in os.environ.items() if key.startswith("CANTAINER_")}
    result = subprocess.run([sys.executable, "-m", "lab.demo"], capture_output=True, text=True, timeout=300,
                            stdin=subprocess.DEVNULL, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "COLUMNS": "120",
                                                           "HOME": "/root", "DEMO_LAB": DEMO_LAB, **settings})
    assert result.returncode == 0, result.stdout + result.stderr
    from lab.rootfs import base_image

    image = base_image()
    assert f"{image.label} on web" in result.stdout  # the image the demo ran, whichever it was
    assert ("an Alpine container on h1" in result.stdout) == (image.kind == "alpine")  # and says so
    # by name: db is h2's, answered by h1's agent (iputils, the fallback's ping, shows the search domain)
    assert re.search(r"PING db(\.backend)? \(10\.0\.0\.3\)", result.stdout), result.stdout
    assert all_answered(result.stdout, 3)
    assert "stack demo: 3 created" in result.stdout and "stack demo: no changes" in result.stdout
    assert "written by demo-notes-1" in result.stdout  # the service's volume
    assert "demo-hello has its 3 tasks running again on h1, h2" in result.stdout  # through h3's crash
    assert not [name for name in netns.listnetns() if name.startswith(f"cantainer-{DEMO_LAB}-")]
