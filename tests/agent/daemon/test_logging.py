"""agent.log is bounded: rotated by size, a fixed number of old files, every file 0640 (pure files)."""
from __future__ import annotations

import logging
import os
import stat

from cantainer_agent.daemon.process import LOG_BACKUPS, AgentLogHandler


def test_agent_log_rotates_by_size_and_keeps_its_mode(tmp_path):
    path = tmp_path / "agent.log"
    handler = AgentLogHandler(str(path), max_bytes=4096)
    logger = logging.Logger("test.rotation")
    logger.addHandler(handler)
    for n in range(2000):
        logger.warning("line %d %s", n, "x" * 60)
    handler.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["agent.log"] + [f"agent.log.{i}" for i in range(1, LOG_BACKUPS + 1)]
    for name in files:
        info = (tmp_path / name).stat()
        assert info.st_size <= 4096 and stat.S_IMODE(info.st_mode) == 0o640, (name, info)
    assert "line 1999" in path.read_text()  # the newest lines are in the current file
    assert sum(os.path.getsize(tmp_path / n) for n in files) <= 4096 * (LOG_BACKUPS + 1)
