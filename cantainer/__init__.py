"""cantainer — the workstation side: CLI, inventory, SSH, bootstrap, status."""

__version__ = "0.1.0"
