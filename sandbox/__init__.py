"""Confined onnxruntime evaluation, framework-free (no Flask, no marketplace imports).

`run_confined` runs trusted code on untrusted bytes in a confined one-shot child (the registry's
inspection); the error taxonomy lives in `sandbox.errors`.
"""

from sandbox.confine import Limits, Protections, apply_confinement, probe, run_confined
from sandbox.errors import HTTP_STATUS, SandboxError

__all__ = [
    "HTTP_STATUS",
    "Limits",
    "Protections",
    "SandboxError",
    "apply_confinement",
    "probe",
    "run_confined",
]
