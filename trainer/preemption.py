"""Stops training cleanly on SIGTERM (cloud preemption, `docker stop`, eviction) or Ctrl-C.

The handler only records the request; the loop checks it at each step
boundary, saves a checkpoint and returns, so nothing is lost and the next start
on the same work directory resumes. A second Ctrl-C interrupts at once.
"""

import signal

from absl import logging


class StopRequest:
    """Set by SIGTERM or SIGINT; read by the training loop between steps."""

    def __init__(self):
        self.signal_name = None
        self._previous = {}

    def install(self) -> "StopRequest":
        """Installs the handlers (main thread only); returns self."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal_name is not None and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        logging.warning(
            "%s received: saving a checkpoint at the next step boundary", self.signal_name
        )

    @property
    def requested(self) -> bool:
        """True once a stop signal has arrived."""
        return self.signal_name is not None

    def uninstall(self) -> None:
        """Restores the previous handlers."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
