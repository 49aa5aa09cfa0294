"""The evaluator pool against benign and hostile models and inputs.

After every test the shared pool must still evaluate a benign model correctly, and the test
process (standing in for the web process) must not have grown.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from onnx import TensorProto

from sandbox.confine import probe
from sandbox.errors import SandboxBusy, SandboxError
from sandbox.pool import EvalResult, PoolConfig, SandboxPool, missing_protections
from tests import onnx_models as models

DEADLINE_S = 1.0
GRACE_S = 0.3
SLACK_S = 0.5  # Scheduling noise on a loaded two-core machine.
CONFIG = PoolConfig(
    workers_max=4,
    worker_memory_bytes_max=1 << 30,
    eval_timeout_s=DEADLINE_S,
    kill_grace_s=GRACE_S,
    input_bytes_max=16 << 20,
    input_elements_max=4 << 20,
    output_bytes_max=16 << 20,
    quarantine_callers=1000,
    throttle_s=0,
    crash_on_input_name="crash_me",
)
F32 = np.float32
BENIGN = models.add()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.fixture(scope="module")
def pool() -> Iterator[SandboxPool]:
    with SandboxPool(CONFIG) as pool:
        yield pool


def _benign_ok(pool: SandboxPool) -> None:
    x = np.arange(6, dtype=F32).reshape(2, 3)
    y = np.array([[10, 20, 30]], dtype=F32)
    result = pool.evaluate("benign", lambda: BENIGN, {"x": x, "y": y})
    np.testing.assert_array_equal(result.outputs["z"], x + y)


@pytest.fixture(autouse=True)
def still_healthy(pool: SandboxPool) -> Iterator[None]:
    _benign_ok(pool)
    before = _rss_bytes()
    yield
    _benign_ok(pool)
    assert _rss_bytes() - before < 64 << 20


class Loads:
    """Model loaders that record, in order, which model each cold start loaded."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def of(self, key: str, model: bytes = BENIGN) -> Callable[[], bytes]:
        def load() -> bytes:
            self.keys.append(key)
            return model

        return load


def _code(call: Callable[[], object]) -> str:
    with pytest.raises(SandboxError) as exc:
        call()
    return exc.value.code


def _eval(pool: SandboxPool, key: str, model: bytes, **inputs: np.ndarray) -> EvalResult:
    return pool.evaluate(key, lambda: model, inputs)


# --- benign behaviour --------------------------------------------------------------------


def test_matmul_is_correct_and_warm_after_the_first_call(pool: SandboxPool) -> None:
    loads = Loads()
    load = loads.of("matmul", models.matmul())
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(F32)
    first = pool.evaluate("matmul", load, {"x": x})
    second = pool.evaluate("matmul", load, {"x": x})
    np.testing.assert_allclose(first.outputs["y"], x @ models.MATMUL_W, rtol=1e-6)
    np.testing.assert_array_equal(second.outputs["y"], first.outputs["y"])
    assert (first.cold, second.cold) == (True, False)
    assert second.load_ms == 0 and first.load_ms > 0
    assert loads.keys == ["matmul"]


def test_repeated_calls_see_fresh_inputs_and_changing_output_shapes(pool: SandboxPool) -> None:
    for i in range(5):
        x = np.full((2, 3), i, dtype=F32)
        out = pool.evaluate("benign", lambda: BENIGN, {"x": x, "y": np.ones((1, 3), F32)})
        np.testing.assert_array_equal(out.outputs["z"], x + 1)
    # Same input shapes, output shape decided by the data: the worker must not reuse a
    # binding made for the earlier output shape (outputs of 256 KiB and more are bound).
    model = models.large_output()
    for rows in (64, 64, 64, 100, 80, 2, 100):
        inputs: dict[str, np.ndarray] = {
            "x": np.full(1, rows, F32),
            "rows": np.array([rows], np.int64),
        }
        y = pool.evaluate("data-shaped", lambda: model, inputs).outputs["y"]
        np.testing.assert_array_equal(y, np.full((rows, 1024), rows, F32))


def test_nan_and_inf_propagate_and_denormals_are_flushed(pool: SandboxPool) -> None:
    x = np.array([[np.nan, np.inf, 1e-40]], dtype=F32)
    assert x[0, 2] != 0  # A genuine float32 denormal.
    z = pool.evaluate("benign", lambda: BENIGN, {"x": x, "y": np.zeros((1, 3), F32)})
    out = z.outputs["z"]
    assert np.isnan(out[0, 0]) and np.isposinf(out[0, 1]) and out[0, 2] == 0


def test_concurrent_callers_get_their_own_results(pool: SandboxPool) -> None:
    errors: list[BaseException] = []

    def call(i: int) -> None:
        try:
            for _ in range(10):
                x = np.full((3, 3), i, dtype=F32)
                out = pool.evaluate("benign", lambda: BENIGN, {"x": x, "y": np.ones((1, 3), F32)})
                np.testing.assert_array_equal(out.outputs["z"], x + 1)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_health_reports_protections_and_counts(pool: SandboxPool) -> None:
    health = pool.health()
    assert health["available"] is True
    protections = health["protections"]
    for name in ("rlimits", "no_new_privs", "seccomp", "fds_closed", "empty_cwd"):
        assert protections[name] is True
    # Workers report what the kernel actually granted them, as the one-shot probe does.
    assert protections["landlock"] is probe().landlock
    assert health["workers"] >= 1
    assert health["queue_depth"] == 0


# --- hostile models ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        models.external_initializer,
        models.external_constant,
        models.external_sparse_initializer,
        models.external_in_subgraph,
    ],
)
def test_external_data_is_refused_by_every_route(
    pool: SandboxPool, build: Callable[[], bytes]
) -> None:
    inputs = {"x": np.zeros(4, F32), "c": np.array(True)}
    if build is not models.external_in_subgraph:
        del inputs["c"]
    assert _code(lambda: pool.evaluate(build.__name__, build, inputs)) == "model_invalid"


@pytest.mark.parametrize("domain", ["com.evil", "com.microsoft"])
def test_foreign_domains_are_refused(pool: SandboxPool, domain: str) -> None:
    model = models.custom_domain(domain)
    code = _code(lambda: _eval(pool, f"domain-{domain}", model, x=np.zeros(4, F32)))
    assert code == "model_invalid"


@pytest.mark.parametrize(
    ("domain", "op_type"), [("com.microsoft", "Gelu"), ("com.microsoft.nchwc", "ReorderInput")]
)
def test_a_local_function_cannot_claim_a_runtime_kernel(
    pool: SandboxPool, domain: str, op_type: str
) -> None:
    model = models.function_claims_domain(domain, op_type)
    x = np.ones((1, 8, 2, 2), F32)
    with pytest.raises(SandboxError) as exc:
        _eval(pool, f"claims-{domain}", model, x=x)
    assert exc.value.code == "model_invalid" and "reserved" in exc.value.detail


def test_unsupported_signatures_are_model_invalid(pool: SandboxPool) -> None:
    long_name = models.identity([1], name="x" * 5000)
    code = _code(lambda: pool.evaluate("long-name", lambda: long_name, {"x": np.zeros(1, F32)}))
    assert code == "model_invalid"
    strings = models.identity([1], elem=TensorProto.STRING)
    assert _code(lambda: _eval(pool, "strings", strings, x=np.zeros(1, F32))) == "model_invalid"


def test_garbage_bytes_are_model_invalid_and_not_reloaded_at_once(pool: SandboxPool) -> None:
    loads = Loads()
    load = loads.of("garbage", b"\x08\x01garbage")
    for _ in range(3):
        assert _code(lambda: pool.evaluate("garbage", load, {"x": np.zeros(4, F32)})) == (
            "model_invalid"
        )
    assert loads.keys == ["garbage"]


def test_runtime_load_errors_do_not_leak_onnxruntime_text(pool: SandboxPool) -> None:
    model = models.type_error()
    with pytest.raises(SandboxError) as exc:
        _eval(pool, "type-error", model, x=np.zeros(4, F32), n=np.zeros(4, np.int64))
    assert exc.value.code == "model_invalid"
    assert "ONNXRuntimeError" not in exc.value.detail and "Type Error" not in exc.value.detail
    assert exc.value.log_detail is not None and "Type Error" in exc.value.log_detail


def test_constant_of_shape_bomb_is_resource_exhausted(pool: SandboxPool) -> None:
    model = models.constant_of_shape_bomb()
    shape = np.array([1 << 18, 1 << 18], dtype=np.int64)
    assert _code(lambda: _eval(pool, "cos-bomb", model, shape=shape)) == "resource_exhausted"
    # The same model with a sane shape still works in the same (warm) worker.
    out = _eval(pool, "cos-bomb", model, shape=np.array([2, 3], dtype=np.int64))
    assert out.outputs["y"].shape == (2, 3)


@pytest.mark.parametrize(
    ("build", "inputs"),
    [
        (models.expand_bomb, {"x": np.zeros(1, F32)}),
        (models.tile_bomb, {"x": np.zeros((1, 1), F32)}),
        (models.resize_bomb, {"x": np.zeros((1, 1, 2, 2), F32)}),
    ],
)
def test_memory_bombs_are_resource_exhausted(
    pool: SandboxPool, build: Callable[[], bytes], inputs: dict[str, np.ndarray]
) -> None:
    assert _code(lambda: pool.evaluate(build.__name__, build, inputs)) == "resource_exhausted"


def test_huge_loop_is_deadline_exceeded_in_time(pool: SandboxPool) -> None:
    model = models.huge_loop()
    _eval_started = time.monotonic()
    assert _code(lambda: _eval(pool, "loop", model, x=np.zeros(1, F32))) == "deadline_exceeded"
    elapsed = time.monotonic() - _eval_started
    assert elapsed < DEADLINE_S + GRACE_S + SLACK_S + 0.5  # + cold load


def test_long_kernel_ignoring_terminate_is_killed_in_time(pool: SandboxPool) -> None:
    model = models.long_matmul()
    small: dict[str, np.ndarray] = {"x": np.ones(1, F32), "n": np.array([8], np.int64)}
    pool.evaluate("matmul-long", lambda: model, small)  # Warm: time only the kernel.
    started = time.monotonic()
    big: dict[str, np.ndarray] = {
        "x": np.ones(1, F32),
        "n": np.array([6144], np.int64),
    }  # Seconds of one MatMul even on a fast core (4096 took 0.7 s: done before the kill).
    assert _code(lambda: pool.evaluate("matmul-long", lambda: model, big, deadline_s=0.5)) == (
        "deadline_exceeded"
    )
    assert time.monotonic() - started < 0.5 + GRACE_S + SLACK_S
    # terminate could not stop the kernel, so the worker was killed: the next call is cold.
    assert pool.evaluate("matmul-long", lambda: model, small).cold


def test_200k_node_chain_gets_a_clean_code(pool: SandboxPool) -> None:
    model = models.long_chain(200_000)
    code = _code(lambda: _eval(pool, "chain", model, t0=np.zeros(1, F32)))
    assert code == "model_invalid"  # Over PoolConfig.nodes_max (100 000).


def test_segfaulting_worker_is_worker_crashed(pool: SandboxPool) -> None:
    model = models.identity([1], name="crash_me")
    code = _code(lambda: _eval(pool, "crasher", model, crash_me=np.zeros(1, F32)))
    assert code == "worker_crashed"


def test_output_above_the_cap_is_resource_exhausted(pool: SandboxPool) -> None:
    model = models.large_output()
    rows = np.array([(32 << 20) // 4096], dtype=np.int64)  # 32 MiB > output_bytes_max.
    code = _code(lambda: _eval(pool, "large-out", model, x=np.ones(1, F32), rows=rows))
    assert code == "resource_exhausted"
    small = _eval(pool, "large-out", model, x=np.ones(1, F32), rows=np.array([2], np.int64))
    assert small.outputs["y"].shape == (2, 1024)
    # The cap is exact: 16 MiB passes, one more row (4 KiB) does not.
    at_cap = np.array([CONFIG.output_bytes_max // 4096], np.int64)
    assert _eval(pool, "large-out", model, x=np.ones(1, F32), rows=at_cap).outputs["y"].nbytes == (
        CONFIG.output_bytes_max
    )
    over = _code(lambda: _eval(pool, "large-out", model, x=np.ones(1, F32), rows=at_cap + 1))
    assert over == "resource_exhausted"


# --- hostile inputs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "inputs",
    [
        {"x": np.zeros((2, 3), np.float64), "y": np.zeros((1, 3), F32)},  # wrong dtype
        {"x": np.zeros((2, 3, 1), F32), "y": np.zeros((1, 3), F32)},  # wrong rank
        {"x": np.zeros((2, 4), F32), "y": np.zeros((1, 3), F32)},  # wrong fixed dim
        {"x": np.zeros((2, 3), F32)},  # missing input
        {"x": np.zeros((2, 3), F32), "y": np.zeros((1, 3), F32), "w": np.zeros(1, F32)},
        {"x": [[1.0, 2.0, 3.0]], "y": np.zeros((1, 3), F32)},  # not an array
        {"x": np.zeros((2, 3), F32).astype(">f4"), "y": np.zeros((1, 3), F32)},  # byte order
        {"x": np.zeros((0, 3), F32), "y": np.zeros((1, 3), F32)},  # no rows: nothing to run
    ],
    ids=["dtype", "rank", "fixed-dim", "missing", "unknown", "not-array", "byte-order", "no-rows"],
)
def test_inputs_that_break_the_signature_are_input_invalid(
    pool: SandboxPool, inputs: dict[str, np.ndarray]
) -> None:
    assert _code(lambda: pool.evaluate("benign", lambda: BENIGN, inputs)) == "input_invalid"


def test_huge_inputs_are_refused_before_any_copy(pool: SandboxPool) -> None:
    # Zero-stride views: terabytes declared, nothing allocated. Copying would kill the test.
    huge = np.broadcast_to(np.float32(0), (1 << 20, 1 << 20))
    declared = models.declared_huge_input()
    assert _code(lambda: _eval(pool, "declared-huge", declared, x=huge[:100_000, :100_000])) == (
        "input_invalid"
    )
    wide = np.broadcast_to(np.float32(0), (1 << 22, 3))
    code = _code(lambda: _eval(pool, "benign", BENIGN, x=wide, y=np.zeros((1, 3), F32)))
    assert code == "input_invalid"


# --- pool policy -------------------------------------------------------------------------


def test_crashes_throttle_the_caller_and_quarantine_only_after_several_callers() -> None:
    config = PoolConfig(
        quarantine_callers=2,
        quarantine_s=60,
        throttle_s=60,
        crash_on_input_name="crash_me",
        workers_max=2,
    )
    model = models.identity([1], name="crash_me")
    inputs = {"crash_me": np.zeros(1, F32)}

    def call(caller: str, version: str = "v1") -> str:
        return _code(
            lambda: pool.evaluate("bytes", lambda: model, inputs, version=version, caller=caller)
        )

    with SandboxPool(config) as pool:
        assert call("mallory") == "worker_crashed"
        # The crasher waits; nobody else does.
        with pytest.raises(SandboxError) as exc:
            pool.evaluate("bytes", lambda: model, inputs, version="v1", caller="mallory")
        assert exc.value.code == "caller_throttled"
        assert 59 < exc.value.retry_after_s <= 60  # type: ignore[attr-defined]
        # The same bytes under another version are a different version: not held.
        assert call("mallory", version="v2") == "worker_crashed"
        assert call("alice") == "worker_crashed"  # the second distinct caller of v1
        with pytest.raises(SandboxError) as exc:
            pool.evaluate("bytes", lambda: model, inputs, version="v1", caller="bob")
        assert exc.value.code == "model_quarantined"
        assert list(pool.health()["quarantined"]) == ["v1"]
        assert call("bob", version="v2") == "worker_crashed"
        out = _eval(pool, "good", BENIGN, x=np.zeros((1, 3), F32), y=np.zeros((1, 3), F32))
        assert out.outputs["z"].shape == (1, 3)


def test_a_deadline_throttles_only_that_caller_and_never_quarantines() -> None:
    config = PoolConfig(
        quarantine_callers=1, throttle_s=60, eval_timeout_s=0.3, kill_grace_s=0.1, workers_max=2
    )
    model = models.huge_loop()
    x = {"x": np.ones(1, F32)}
    with SandboxPool(config) as pool:
        with pytest.raises(SandboxError) as exc:
            pool.evaluate("loop", lambda: model, x, version="v1", caller="mallory")
        assert exc.value.code == "deadline_exceeded"
        assert exc.value.ran_to_deadline  # type: ignore[attr-defined]
        with pytest.raises(SandboxError) as exc:
            pool.evaluate("loop", lambda: model, x, version="v1", caller="mallory")
        assert exc.value.code == "caller_throttled"
        with pytest.raises(SandboxError) as exc:
            pool.evaluate("loop", lambda: model, x, version="v1", caller="alice")
        assert exc.value.code == "deadline_exceeded"  # alice runs; v1 is not quarantined
        assert pool.health()["quarantined"] == {}


def test_workers_do_not_inherit_the_callers_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JISHI_TEST_SECRET", "s3cr3t")
    with SandboxPool(PoolConfig(workers_max=2)) as pool:
        assert pool._zygote is not None
        pool.health()  # Waits for the zygote and forks a probe worker from it.
        with open(f"/proc/{pool._zygote.process.pid}/environ", "rb") as f:
            environ = f.read()
    assert b"s3cr3t" not in environ and b"JISHI_TEST_SECRET" not in environ


def test_a_dead_zygote_is_restarted() -> None:
    inputs = {"x": np.zeros((1, 3), F32), "y": np.ones((1, 3), F32)}
    with SandboxPool(PoolConfig(workers_max=2)) as pool:
        pool.evaluate("a", lambda: BENIGN, inputs)
        assert pool._zygote is not None
        pool._zygote.process.kill()
        pool._zygote.process.wait()
        time.sleep(0.1)  # The warm worker follows its parent (PDEATHSIG).
        result = pool.evaluate("a", lambda: BENIGN, inputs)
        assert result.cold
        np.testing.assert_array_equal(result.outputs["z"], np.ones((1, 3), F32))


def test_a_killed_worker_is_replaced_on_the_next_call(pool: SandboxPool) -> None:
    loads = Loads()
    load = loads.of("respawn", models.long_matmul())
    x = np.ones(1, F32)
    big: dict[str, np.ndarray] = {"x": x, "n": np.array([4096], np.int64)}
    assert _code(lambda: pool.evaluate("respawn", load, big, deadline_s=0.3)) == (
        "deadline_exceeded"
    )
    result = pool.evaluate("respawn", load, {"x": x, "n": np.array([16], np.int64)})
    assert result.outputs["y"] == 16.0**3
    assert result.cold and loads.keys == ["respawn", "respawn"]


def test_lru_evicts_the_least_recently_used_worker() -> None:
    loads = Loads()
    inputs = {"x": np.zeros((1, 3), F32), "y": np.zeros((1, 3), F32)}
    with SandboxPool(PoolConfig(workers_max=2, workers_busy_max=1)) as pool:
        for key in ("a", "b", "a", "c", "a", "b"):
            pool.evaluate(key, loads.of(key), inputs)
        assert loads.keys == ["a", "b", "c", "b"]
        assert pool.health()["workers"] == 2


def test_the_memory_budget_evicts_idle_workers() -> None:
    loads = Loads()
    inputs = {"x": np.zeros((1, 3), F32), "y": np.zeros((1, 3), F32)}
    # A budget smaller than any worker: only the worker in use may stay.
    with SandboxPool(PoolConfig(workers_max=4, memory_budget_bytes=1 << 20)) as pool:
        for key in ("a", "b", "a"):
            pool.evaluate(key, loads.of(key), inputs)
        assert loads.keys == ["a", "b", "a"]
        assert pool.health()["workers"] == 1


def test_a_full_queue_answers_busy_with_retry_after() -> None:
    endless = models.huge_loop()
    config = PoolConfig(workers_max=1, workers_busy_max=1, queue_max=0)
    with SandboxPool(config) as pool:

        def occupy() -> None:
            with pytest.raises(SandboxError):  # Holds the only slot until its deadline.
                pool.evaluate("endless", lambda: endless, {"x": np.ones(1, F32)}, deadline_s=1.5)

        thread = threading.Thread(target=occupy)
        thread.start()
        waited = time.monotonic()
        while pool.health()["workers_busy"] < 1 and time.monotonic() - waited < 5:
            time.sleep(0.01)
        with pytest.raises(SandboxError) as exc:
            _eval(pool, "other", BENIGN, x=np.zeros((1, 3), F32), y=np.zeros((1, 3), F32))
        thread.join()
    assert exc.value.code == "sandbox_busy"
    assert isinstance(exc.value, SandboxBusy) and exc.value.retry_after_s > 0


def test_required_protections_are_checked() -> None:
    reported = {"rlimits": True, "seccomp": False, "landlock": True}
    assert missing_protections(("rlimits", "seccomp", "no_new_privs"), reported) == [
        "seccomp",
        "no_new_privs",
    ]
    with pytest.raises(ValueError):
        PoolConfig(required_protections=("telepathy",))
    # On this host every protection the default configuration requires is in force.
    with SandboxPool(
        PoolConfig(required_protections=("landlock",) if probe().landlock else ())
    ) as p:
        out = _eval(p, "benign", BENIGN, x=np.zeros((1, 3), F32), y=np.zeros((1, 3), F32))
        assert out.cold


def test_closed_pool_is_unavailable() -> None:
    pool = SandboxPool(PoolConfig())
    pool.close()
    assert _code(lambda: _eval(pool, "x", BENIGN, x=np.zeros((1, 3), F32))) == (
        "sandbox_unavailable"
    )
