"""The sandbox is a library: importing it pulls in no web framework and no onnxruntime."""

from __future__ import annotations

import os
import subprocess
import sys


def test_importing_sandbox_loads_no_framework_and_no_runtime() -> None:
    code = (
        "import sys, sandbox, sandbox.pool, sandbox.confine, sandbox.errors; "
        "print(sorted(m for m in ('flask', 'marketplace', 'onnxruntime') if m in sys.modules))"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert done.stdout.strip() == "[]"
