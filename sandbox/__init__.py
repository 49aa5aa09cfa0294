"""Confined onnxruntime evaluation, framework-free (no Flask, no marketplace imports).

- `SandboxPool(PoolConfig(...)).evaluate(model_key, load_bytes, inputs)` runs a model in a
  confined, warm worker (see `sandbox.pool`); `health()` reports the protections in force.
- `run_confined(target, payload, limits=Limits(...))` runs trusted code on untrusted bytes in a
  confined one-shot child and returns its JSON result (see `sandbox.confine`).
- Every failure is a `SandboxError` with a stable `code`; the web layer maps codes to statuses.
"""

from sandbox.confine import Limits, Protections, apply_confinement, probe, run_confined
from sandbox.errors import SandboxError
from sandbox.pool import EvalResult, PoolConfig, SandboxPool

__all__ = [
    "EvalResult",
    "Limits",
    "PoolConfig",
    "Protections",
    "SandboxError",
    "SandboxPool",
    "apply_confinement",
    "probe",
    "run_confined",
]
