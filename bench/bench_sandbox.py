"""Raw in-process onnxruntime vs the sandbox pool (warm), same session options, same host.

Run: .venv/bin/python -m bench.bench_sandbox [--calls N]

Prints p50/p99 per case (and the median run time measured inside the worker, which separates
compute from transport) and the figures DESIGN §6 sets targets for:
  (a) conv, compute >= 1 ms: sandbox p50 / raw p50 <= 1.15
  (b) tiny model: sandbox p50 - raw p50 <= 100 us
  (c) 4 MB in / 4 MB out: (sandbox p50 - raw p50) / MB moved <= 0.2 ms
plus the cold first call and the respawn after a worker is killed.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

from sandbox.pool import PoolConfig, SandboxPool
from sandbox.runtime import session_options

F = TensorProto.FLOAT
Inputs = dict[str, np.ndarray]
CONSTANT_FOLDING_BYTES_MAX = PoolConfig().constant_folding_bytes_max


def _model(nodes: list, inputs: list, outputs: list, initializers: list) -> bytes:
    graph = oh.make_graph(nodes, "bench", inputs, outputs, initializer=initializers)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def conv_model() -> tuple[bytes, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    w1 = nh.from_array(rng.standard_normal((32, 3, 3, 3)).astype(np.float32) * 0.1, "w1")
    w2 = nh.from_array(rng.standard_normal((32, 32, 3, 3)).astype(np.float32) * 0.1, "w2")
    model = _model(
        [
            oh.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
            oh.make_node("Relu", ["c1"], ["r1"]),
            oh.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
            oh.make_node("GlobalAveragePool", ["c2"], ["y"]),
        ],
        [oh.make_tensor_value_info("x", F, [1, 3, 96, 96])],
        [oh.make_tensor_value_info("y", F, [1, 32, 1, 1])],
        [w1, w2],
    )
    return model, {"x": rng.standard_normal((1, 3, 96, 96)).astype(np.float32)}


def tiny_model() -> tuple[bytes, dict[str, np.ndarray]]:
    model = _model(
        [oh.make_node("Add", ["x", "y"], ["z"])],
        [oh.make_tensor_value_info("x", F, [1, 4]), oh.make_tensor_value_info("y", F, [1, 4])],
        [oh.make_tensor_value_info("z", F, [1, 4])],
        [],
    )
    return model, {"x": np.ones((1, 4), np.float32), "y": np.ones((1, 4), np.float32)}


def payload_model() -> tuple[bytes, dict[str, np.ndarray]]:
    """4 MB in, 4 MB out: y = x + 1 on a million float32."""
    n = 1 << 20
    model = _model(
        [oh.make_node("Add", ["x", "one"], ["y"])],
        [oh.make_tensor_value_info("x", F, [n])],
        [oh.make_tensor_value_info("y", F, [n])],
        [nh.from_array(np.ones(1, np.float32), "one")],
    )
    return model, {"x": np.arange(n, dtype=np.float32)}


def timed_us(call: Callable[[], object], calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        started = time.perf_counter_ns()
        call()
        out.append((time.perf_counter_ns() - started) / 1000.0)
    return out


def interleaved_us(
    raw: Callable[[], object], sandboxed: Callable[[], object], calls: int, rounds: int = 10
) -> tuple[list[float], list[float]]:
    """Alternate blocks of raw and sandboxed calls so that load from elsewhere hits both."""
    timed_us(raw, 20)
    timed_us(sandboxed, 20)
    raw_us: list[float] = []
    sandboxed_us: list[float] = []
    for _ in range(rounds):
        raw_us += timed_us(raw, max(calls // rounds, 1))
        sandboxed_us += timed_us(sandboxed, max(calls // rounds, 1))
    return raw_us, sandboxed_us


def p(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument(
        "--nice",
        type=int,
        default=-10,
        help="niceness for this process, inherited by the zygote and workers (needs root to "
        "go below 0); keeps other jobs on a shared host from dominating both sides alike",
    )
    args = parser.parse_args()
    try:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
    except PermissionError:
        print(
            f"(could not set niceness {args.nice}; running at {os.getpriority(os.PRIO_PROCESS, 0)})"
        )

    cases = {"conv": conv_model(), "tiny": tiny_model(), "payload_4MB": payload_model()}
    pool = SandboxPool(PoolConfig(workers_max=4))
    results = {}
    try:
        print(
            f"{'case':<12} {'raw p50':>10} {'raw p99':>10} {'sbx p50':>10} {'sbx p99':>10}"
            f" {'in-worker p50':>14}  (us)"
        )
        for name, (model, inputs) in cases.items():
            options = session_options(constant_folding_bytes_max=CONSTANT_FOLDING_BYTES_MAX)
            session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
            reference = session.run(None, inputs)[0]
            got = pool.evaluate(name, lambda m=model: m, inputs).outputs  # type: ignore[misc]
            np.testing.assert_allclose(next(iter(got.values())), reference, rtol=1e-5)

            def raw_call(s: ort.InferenceSession = session, i: Inputs = inputs) -> object:
                return s.run(None, i)

            worker_run_us: list[float] = []

            def sandboxed_call(
                n: str = name,
                m: bytes = model,
                i: Inputs = inputs,
                runs: list[float] = worker_run_us,
            ) -> object:
                result = pool.evaluate(n, lambda: m, i)
                runs.append(result.run_ms * 1000.0)
                return result

            raw, sbx = interleaved_us(raw_call, sandboxed_call, args.calls)
            results[name] = (raw, sbx)
            print(
                f"{name:<12} {p(raw, 50):>10.1f} {p(raw, 99):>10.1f} "
                f"{p(sbx, 50):>10.1f} {p(sbx, 99):>10.1f} {p(worker_run_us, 50):>14.1f}"
            )

        raw, sbx = results["conv"]
        ratio50, ratio99 = p(sbx, 50) / p(raw, 50), p(sbx, 99) / p(raw, 99)
        print(f"(a) conv: p50 ratio {ratio50:.3f} (goal <= 1.15), p99 ratio {ratio99:.3f}")
        raw, sbx = results["tiny"]
        added50, added99 = p(sbx, 50) - p(raw, 50), p(sbx, 99) - p(raw, 99)
        print(f"(b) tiny: added p50 {added50:.1f} us (goal <= 100 us), added p99 {added99:.1f} us")
        raw, sbx = results["payload_4MB"]
        moved_mb = 8 * (1 << 20) / 1e6
        per_mb = (p(sbx, 50) - p(raw, 50)) / 1000.0 / moved_mb
        per_mb99 = (p(sbx, 99) - p(raw, 99)) / 1000.0 / moved_mb
        print(
            f"(c) payload: added {per_mb:.3f} ms per MB moved at p50 (goal <= 0.2), "
            f"{per_mb99:.3f} at p99; ratios p50 {p(sbx, 50) / p(raw, 50):.2f}"
        )

        model, inputs = cases["conv"]
        started = time.perf_counter()
        cold = pool.evaluate("conv-cold", lambda: model, inputs)
        print(
            f"cold first call (conv): {(time.perf_counter() - started) * 1000:.1f} ms "
            f"(load {cold.load_ms:.1f} ms, run {cold.run_ms:.2f} ms)"
        )
        worker = next(w for w in pool._cache.workers() if w.key == "conv-cold")
        signal.pidfd_send_signal(worker.pidfd, signal.SIGKILL)
        time.sleep(0.05)
        started = time.perf_counter()
        again = pool.evaluate("conv-cold", lambda: model, inputs)
        print(
            f"respawn after kill (conv): {(time.perf_counter() - started) * 1000:.1f} ms "
            f"(cold={again.cold}, load {again.load_ms:.1f} ms)"
        )
        print(f"protections: {pool.health()['protections']}")
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        nice = os.getpriority(os.PRIO_PROCESS, 0)
        print(
            f"host: {os.cpu_count()} cpus, load average {load}, niceness {nice}, "
            f"onnxruntime {ort.__version__}"
        )
    finally:
        pool.close()


if __name__ == "__main__":
    main()
