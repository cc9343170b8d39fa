"""``python3 -m cantainer_agent run --config PATH [--daemon]`` | ``python3 -m cantainer_agent version``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from . import __version__, layout

if TYPE_CHECKING:
    import argparse

    from .config import AgentConfig


def plain_run(argv: list[str]) -> tuple[str, bool] | None:
    """(config path, daemon) for the two command lines hosts start the agent with — ``run --config
    PATH --daemon`` (`up`) and ``run --config PATH`` (the systemd unit) — else None: argparse reads
    anything else. Parsed by hand because importing argparse is ~5 ms of every host's start."""
    if len(argv) in (3, 4) and argv[:2] == ["run", "--config"] and argv[2] and not argv[2].startswith("-"):
        if len(argv) == 3 or argv[3] == "--daemon":
            return argv[2], len(argv) == 4
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    plain = plain_run(argv)
    if plain is not None:
        return _run(*plain)
    args = parser().parse_args(argv)
    if args.command == "probe":
        from .tools import probe as run_probe

        return run_probe(args.state_dir, args.run_dir, args.id, args.argv[1:] if args.argv[:1] == ["--"] else
                         args.argv, args.timeout)
    if args.command in ("logs", "exec", "attach", "teardown"):
        from .tools import main as tool_main

        if args.command == "exec":
            args.argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        return tool_main(args.command, args)

    if args.command == "version":
        print(__version__)
        return 0
    return _run(args.config, args.daemon)


def parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(prog="cantainer_agent", description="cantainer host agent")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent")
    run.add_argument("--config", required=True, help="path of the agent config (JSON)")
    run.add_argument("--daemon", action="store_true", help="detach; exit 0 once ready, 1 with one error line")
    sub.add_parser("version", help="print the agent version")
    logs = sub.add_parser("logs", help="print a container's log (host-side tool)")
    logs.add_argument("id")
    logs.add_argument("--follow", action="store_true")
    logs.add_argument("--exit-code", action="store_true", help="exit with the container's exit code")
    logs.add_argument("--tail", type=int, help="only the last N lines")
    logs.add_argument("--since", default="", help="only records at or after this RFC 3339 UTC time")
    logs.add_argument("--timestamps", action="store_true", help="start each line with its time")
    logs.add_argument("--stdout", action="store_true", help="only stdout (default: both)")
    logs.add_argument("--stderr", action="store_true", help="only stderr (default: both)")
    execute = sub.add_parser("exec", help="run a command in a container (host-side tool)")
    execute.add_argument("id")
    execute.add_argument("--tty", action="store_true", help="stdio is a terminal: pass its TERM to the command")
    execute.add_argument("argv", nargs=argparse.REMAINDER)
    attach = sub.add_parser("attach", help="attach stdio to a tty/stdin container; exit with its code (host-side tool)")
    attach.add_argument("id")
    teardown = sub.add_parser("teardown", help="stop this host's containers (and with --remove remove them) and its "
                                               "overlay devices; the agent must be stopped")
    teardown.add_argument("--stop-timeout", type=float, default=10.0, help="seconds from SIGTERM to SIGKILL")
    teardown.add_argument("--remove", action="store_true", help="remove the containers too (down --purge)")
    for tool in (logs, execute, attach, teardown):
        tool.add_argument("--config", default=layout.CONFIG_FILE)
    probe = sub.add_parser("probe", help="run a health check in a container (the agent's own tool)")
    probe.add_argument("--state-dir", required=True)
    probe.add_argument("--run-dir", required=True)
    probe.add_argument("--timeout", type=float, required=True)
    probe.add_argument("id")
    probe.add_argument("argv", nargs=argparse.REMAINDER)
    return parser


def _run(config: str, daemon: bool) -> int:
    from .config import ConfigError, load_config

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        print(f"cantainer-agent: error: {exc}", file=sys.stderr)
        return 1
    if daemon:
        from .daemon.detach import detach

        return detach(cfg.log_file, lambda ready_fd: _daemon(cfg, ready_fd))  # the agent is imported after the forks
    from .daemon.process import run_foreground

    return run_foreground(cfg)


def _daemon(cfg: AgentConfig, ready_fd: int) -> None:
    """The detached grandchild: only now the agent itself is imported."""
    from .daemon.process import daemon_main

    daemon_main(cfg, ready_fd)


if __name__ == "__main__":
    sys.exit(main())
