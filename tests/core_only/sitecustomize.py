"""Makes this interpreter a core-only install: the extras' packages cannot be imported.

Put this directory first on PYTHONPATH. A meta-path finder in front of every other one refuses the
top-level packages of the `peer`, `coordinator`, `dashboard`, `serve` and test extras with the
ModuleNotFoundError a missing package gives, so code that needs them fails exactly as it would where
they are not installed. Used by tests/test_packaging.py (why there and not a bare venv: see its docstring).
"""

from __future__ import annotations

import os
import sys
from importlib.abc import MetaPathFinder

BLOCKED = frozenset(os.environ.get("CAIRN_BLOCKED_MODULES", "").split(",")) - {""}


class _NotInstalled(MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001 - importlib's signature
        if fullname.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


sys.meta_path.insert(0, _NotInstalled())
