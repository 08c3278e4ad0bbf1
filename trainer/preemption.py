"""Stops training cleanly on a preemption notice, SIGTERM (`docker stop`, eviction) or Ctrl-C.

Nothing here stops the process: a notice is recorded, the loop saves a
checkpoint at a step boundary and returns, and the entry point exits 128 +
the signal (143 for SIGTERM and for any preemption notice, 130 for Ctrl-C),
so that an orchestrator restarts the job and the next start on the same work
directory resumes. A second Ctrl-C interrupts at once.

Two mechanisms, chosen by `mechanism_for` from the strategy:

- `StopRequest`, our own, for one_device and mirrored: TensorFlow documents
  its handler for MultiWorkerMirroredStrategy and TPUStrategy only, and one
  process needs no agreement on the step to stop at: a signal handler that
  sets a flag, read between train calls, is all there is to it (a GCE VM
  shut down for maintenance or preemption sends SIGTERM too).
- TensorFlow's `tf.distribute.experimental.PreemptionCheckpointHandler`, for
  multi_worker_mirrored and tpu. It watches what a signal handler cannot see:
  on a GCE GPU VM the metadata server's maintenance event
  (TERMINATE_ON_HOST_MAINTENANCE, with TF's one-hour grace period: a
  checkpoint at once, training on, a last checkpoint before the end), on
  Google-internal TPUs the TPU workers' preemption (TPUStrategy, TF >= 2.12);
  and it agrees on the step to save at through the coordination service. Off
  GCE it owns SIGTERM itself: the first worker to get it names the next train
  call as the one after which every worker saves and stops.

  It is wired so that our checkpoints stay ours: it gets its own empty
  `tf.train.Checkpoint` in a temporary folder, so its constructor's restore
  is a no-op (ours ran before, with its fallback over damaged checkpoints),
  it adds nothing to the checkpoints of WORKDIR/checkpoints (older ones still
  restore) and its call counter starts at 0 on every worker alike; it saves
  through `TrainingState.save` (`save_fn`: the chief into WORKDIR/checkpoints,
  the others into a removed temporary folder), and its `exit_fn` only marks
  the run as stopped, instead of TF's `sys.exit(42)` or 143 from inside the
  loop: the loop returns, cleans up and the entry point exits 143.

  Where it would watch nothing it is dropped for `StopRequest`: TF 2.21 warns
  that it "does not support usage with TPU or CPU device on GCP" (a Cloud TPU
  VM, GCE CPU VMs) and then watches no signal nor event. All workers must
  take the same path (their loop makes the same collectives), so they agree
  on it once at the start: one worker without it takes them all back to
  `StopRequest`.

Only one mechanism owns SIGTERM in a process: the handler when it installed a
SIGTERM handler (multi-worker off GCE; ours only wraps it to name the signal
in the log), `StopRequest` otherwise (one_device, mirrored, tpu, and GCE GPU
workers, where the handler watches the maintenance event instead). Ctrl-C
(SIGINT) always goes to `StopRequest`, whose flag the workers agree on after
every train call, as before.
"""

import shutil
import signal
import tempfile

from trainer import distribute

import tensorflow as tf
from absl import logging

OWN = "StopRequest"
TF_HANDLER = "PreemptionCheckpointHandler"
# TF's platform names (failure_handling_util.PlatformDevice) where its handler watches nothing.
TF_HANDLER_INERT_PLATFORMS = frozenset({"GCE_CPU", "GCE_TPU"})
PREEMPTION_NOTICE = "a preemption notice"
OTHER_WORKER = "another worker's stop request"
_TF_HANDLER_STRATEGIES = ("multi_worker_mirrored", "tpu")


def mechanism_for(strategy_name: str) -> str:
    """`TF_HANDLER` for the strategies TensorFlow's handler supports, `OWN` for the others.

    Args:
        strategy_name: a `--strategy` name (`distribute.strategy_name`).
    """
    return TF_HANDLER if strategy_name in _TF_HANDLER_STRATEGIES else OWN


def tf_handler_watches(platform_name: str | None) -> bool:
    """Whether TensorFlow's handler watches anything on the platform it detected."""
    return platform_name not in TF_HANDLER_INERT_PLATFORMS


class StopRequest:
    """Set by SIGTERM or SIGINT; read by the training loop between steps."""

    def __init__(self):
        self.signal_name = None
        self._previous = {}

    def install(self, signals=(signal.SIGTERM, signal.SIGINT)) -> "StopRequest":
        """Installs the handlers of `signals` (main thread only); returns self."""
        for signum in signals:
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


class Watch:
    """What the training loop asks between steps, whichever mechanism serves the strategy.

    Usage: `install()` after the state is restored; `should_stop()` before each
    train call (every worker, at the same point: it may be a collective);
    `after_step()` after each periodic save; `end()` once the loop has ended;
    `stopped_by` once stopped; `uninstall()` in `finally`.
    """

    def __init__(self, strategy: tf.distribute.Strategy, state, *, mechanism: str | None = None):
        """`state`: the run's `checkpoint.TrainingState`; `mechanism` overrides the choice."""
        self._strategy = strategy
        self._state = state
        self.mechanism = mechanism or mechanism_for(distribute.strategy_name(strategy))
        self._stop = StopRequest()
        self._any_worker = distribute.make_any_worker_fn(strategy)
        self._handler = None
        self._handler_dir = None
        self._tf_stopped = False
        self._sigterm_seen = False
        self._previous_sigterm = None

    def install(self) -> "Watch":
        """Installs the mechanism (main thread only); returns self."""
        self._previous_sigterm = signal.getsignal(signal.SIGTERM) or signal.SIG_DFL
        if self.mechanism == TF_HANDLER:
            self._handler = self._make_handler()
            # One collective, on every worker alike (the mechanism depends on the strategy only).
            if self._any_worker(self._handler is None) and self._handler is not None:
                self._drop_handler("another worker has none")
        if self._handler is None:
            self.mechanism = OWN
            self._stop.install()
            return self
        tf_sigterm = signal.getsignal(signal.SIGTERM)
        if tf_sigterm is not self._previous_sigterm:
            # Off GCE the handler took SIGTERM: it owns it, ours only names it.
            def on_sigterm(signum, frame):
                self._sigterm_seen = True
                logging.warning("SIGTERM received: PreemptionCheckpointHandler saves and stops")
                tf_sigterm(signum, frame)

            signal.signal(signal.SIGTERM, on_sigterm)
            self._stop.install(signals=(signal.SIGINT,))
            logging.info("Preemption: SIGTERM goes to PreemptionCheckpointHandler")
        else:
            # It polls the platform's notices instead (GCE GPU, TPU): SIGTERM is ours.
            self._stop.install()
            logging.info("Preemption: SIGTERM goes to StopRequest, notices to the handler")
        return self

    def _make_handler(self):
        """TensorFlow's handler, or None where it would watch nothing or cannot be made."""
        self._handler_dir = tempfile.mkdtemp(prefix="preemption_handler_")
        # Its own empty checkpoint: its constructor restores "the latest checkpoint"
        # of this empty folder, i.e. nothing; ours stays the one restored.
        manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(), self._handler_dir, max_to_keep=1
        )
        config = tf.distribute.experimental.TerminationConfig(
            exit_fn=self._on_tf_exit, save_fn=self._on_tf_save
        )
        try:
            handler = tf.distribute.experimental.PreemptionCheckpointHandler(
                self._strategy.cluster_resolver, manager, termination_config=config
            )
        except Exception as error:  # noqa: BLE001  (an unsupported cluster, a TF change)
            self._drop_handler(f"it cannot be made: {error}")
            return None
        # Not public: the platform TF detected (GCE_GPU, INTERNAL_CPU, ...).
        platform = getattr(getattr(handler, "_platform_device", None), "name", None)
        if not tf_handler_watches(platform):
            self._drop_handler(f"it watches nothing on {platform}")
            return None
        logging.info("Preemption: PreemptionCheckpointHandler on %s", platform)
        return handler

    def _drop_handler(self, why: str) -> None:
        logging.info("Preemption: own StopRequest, not PreemptionCheckpointHandler (%s)", why)
        signal.signal(signal.SIGTERM, self._previous_sigterm)
        self._handler = None

    def _on_tf_save(self, *args, **kwargs):
        self._state.save(force=True)

    def _on_tf_exit(self):
        self._tf_stopped = True

    def should_stop(self) -> bool:
        """True when the run is to stop now; the same answer on every worker."""
        # The handler marks every worker stopped after the same call: all of
        # them skip the collective together.
        if self._tf_stopped:
            return True
        return self._any_worker(self._stop.requested)

    def after_step(self) -> None:
        """Lets the handler save and stop at the step the workers agreed on."""
        if self._handler is not None and not self._tf_stopped:
            self._handler.save_checkpoint_if_preempted()

    @property
    def stopped_by(self) -> str:
        """Why the run stopped, for the message and the exit status (a signal's name or not)."""
        if self._stop.signal_name:
            return self._stop.signal_name
        if self._sigterm_seen:
            return "SIGTERM"
        if self._tf_stopped:
            return PREEMPTION_NOTICE
        return OTHER_WORKER

    def end(self) -> None:
        """Stops the handler's watcher threads; call on every worker when the loop has ended.

        One of them waits in the coordination service (on the chief) for a
        peer's stop request until told to stop. Left waiting, it fails with a
        traceback on the other workers when the chief exits, and the handler's
        cleanup then runs in that thread ("cannot join current thread"). Here
        every worker is still there, so it is told to stop the way TensorFlow's
        own cleanup does (private methods: the handler has no public one).
        """
        if self._handler is None:
            return
        for stop in (
            "_stop_cluster_wise_termination_watcher_thread",
            "_stop_poll_termination_signal_thread",
        ):
            getattr(self._handler, stop, lambda: None)()

    def uninstall(self) -> None:
        """Restores the previous handlers and removes the handler's folder."""
        self._stop.uninstall()
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None
        # Its watcher threads ended in `end` (or are daemons, after an error).
        self._handler = None
        if self._handler_dir is not None:
            shutil.rmtree(self._handler_dir, ignore_errors=True)
