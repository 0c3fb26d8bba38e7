"""The console entry shared by the nodes: init, build the node, spin a multi-threaded executor, shut down.

A node that refuses to start (bad parameters, a model or checkpoint it cannot load) ends the process
with one fatal log line and exit code 2, never a traceback: launch files and supervisors can tell a
configuration error (2) from a crash (1) and a clean stop (0).
"""

from __future__ import annotations

import functools
import os
import sys
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


def exit_now(code: int) -> None:
    """End a node's process once it has shut down: flush, then exit without the interpreter's teardown.

    Collecting torch's and transformers' objects at exit took 8 s on a busy 2-core machine, longer than the
    5 s launch waits after SIGINT before it escalates to SIGTERM and reports the node as died.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def steady_clock():
    """A clock for timers that must run in wall time even when the node uses sim time (/clock)."""
    from rclpy.clock import Clock, ClockType

    return Clock(clock_type=ClockType.STEADY_TIME)


def unless_destroyed(callback: Callable) -> Callable:
    """A timer callback that returns quietly when it runs while its node is destroyed.

    The executor runs a callback it already took even while ``destroy_node`` runs; the node's handles then
    raise InvalidHandle, which would end the executor's spin and starve every other node it serves (seen in a
    full test run).
    """
    from rclpy.exceptions import InvalidHandle

    @functools.wraps(callback)
    def guarded(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except InvalidHandle:
            return None

    return guarded
