"""cantainer_agent — the host side, pushed to every host by `cantainer up`.

Imports nothing from the workstation package `cantainer`.
"""

__version__ = "0.1.0"
