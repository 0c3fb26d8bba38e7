"""Helpers shared by the in-process rclpy tests (imported only by modules that already need rclpy)."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager


def wait_until(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.005)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@contextmanager
def spinning_context(domain_id: int, threads: int = 4):
    """A private rclpy context on ``domain_id`` with a multi-threaded executor spinning in a thread."""
    import rclpy
    from rclpy.executors import MultiThreadedExecutor

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain_id)
    executor = MultiThreadedExecutor(num_threads=threads, context=ctx)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    try:
        yield ctx, executor
    finally:
        executor.shutdown(timeout_sec=5)
        rclpy.shutdown(context=ctx)
        thread.join(timeout=5)
