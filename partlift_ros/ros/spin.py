"""The console entry shared by the nodes: init, build the node, spin a multi-threaded executor, shut down."""

from __future__ import annotations

from collections.abc import Callable

import rclpy


def run_node(make_node: Callable[[], object], name: str, startup_errors: tuple[type, ...], threads: int,
             args: list[str] | None = None) -> int:
    """Exit code 2 (with one fatal log line) when the node refuses its parameters, else 0 after shutdown."""
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

    rclpy.init(args=args)
    try:
        node = make_node()
    except startup_errors as exc:
        from rclpy.logging import get_logger

        get_logger(name).fatal(f"cannot start: {exc}")
        rclpy.try_shutdown()
        return 2
    executor = MultiThreadedExecutor(num_threads=threads)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
