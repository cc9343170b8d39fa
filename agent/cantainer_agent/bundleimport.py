"""Imports from the agent's bundle zip that read each module once.

Python's zipimport (3.8 to at least 3.12) reads, inflates and unmarshals a module's code twice: once
to name its file while it makes the module's spec (``get_filename``), and again to run it
(``get_code``). :func:`install` puts an importer in front of it for the bundle's own paths that keeps
the code of the first read for the second; everything else imports as before. Where the standard
zipimport lacks the function this relies on (another Python), nothing is installed.
"""
from __future__ import annotations

import sys
import zipimport

_get_module_code = getattr(zipimport, "_get_module_code", None)


class ReadOnceImporter(zipimport.zipimporter):
    """A zipimporter whose ``get_code`` returns the code ``get_filename`` already read."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self._codes: dict = {}

    def get_filename(self, fullname: str) -> str:
        code, _is_package, path = _get_module_code(self, fullname)
        self._codes[fullname] = code
        return path

    def get_code(self, fullname: str):  # noqa: ANN201 - a code object, as zipimport's
        code = self._codes.pop(fullname, None)
        return code if code is not None else super().get_code(fullname)


def _inside(path: str, archive: str) -> bool:
    return path == archive or path.startswith(archive + "/")


def install(archive: str) -> bool:
    """Import the modules of the zip file *archive* (and its packages) through
    :class:`ReadOnceImporter`. Returns False, changing nothing, when *archive* is not a zip file or
    this Python's zipimport is not the one it expects."""
    if _get_module_code is None or not isinstance(sys.path_importer_cache.get(archive), zipimport.zipimporter):
        return False  # not a zip this interpreter imports from (an unpacked bundle is a directory)

    def hook(path: str) -> ReadOnceImporter:
        if not _inside(path, archive):
            raise ImportError("not the agent bundle")
        return ReadOnceImporter(path)

    sys.path_hooks.insert(0, hook)
    for path in [p for p in sys.path_importer_cache if _inside(p, archive)]:
        del sys.path_importer_cache[path]  # made by the standard importer before this ran
    return True
