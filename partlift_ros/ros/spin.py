"""The console entry shared by the nodes: init, build the node, spin a multi-threaded executor, shut down.

A node that refuses to start (bad parameters, a model or checkpoint it cannot load) ends the process
with one fatal log line and exit code 2, never a traceback: launch files and supervisors can tell a
configuration error (2) from a crash (1) and a clean stop (0).
"""

from __future__ import annotations

from collections.abc import Callable

import rclpy


def run_node(make_node: Callable[[], object], name: str, startup_errors: tuple[type, ...], threads: int,
             args: list[str] | None = None) -> int:
    """Exit code 2 (with one fatal log line) when the node refuses to start, else 0 after shutdown."""
    from rclpy.exceptions import InvalidNamespaceException, InvalidNodeNameException, ParameterException
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

    rclpy.init(args=args)
    try:
        node = make_node()
    except (*startup_errors, ParameterException, InvalidNodeNameException, InvalidNamespaceException) as exc:
        from rclpy.logging import get_logger

        # One line: a multi-line reason (e.g. "To fix: ...") is joined so log scrapers see it whole.
        get_logger(name).fatal(f"cannot start: {' '.join(str(exc).split())}")
        rclpy.try_shutdown()  # destroys the half-built node, whose destroy_node copes with that
        return 2
    except KeyboardInterrupt:
        rclpy.try_shutdown()
        return 130
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
