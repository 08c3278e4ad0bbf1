"""trainer.preemption: which strategy gets which stop mechanism, and both mechanisms at work.

The TensorFlow handler runs for real here, in its single-process ("local")
mode: the multi-worker case is `tests/test_launch.py`'s SIGTERM test.
"""

import http.server
import os
import signal
import threading

from trainer import preemption, train

import pytest
import tensorflow as tf
from tensorflow.python.distribute.failure_handling import failure_handling_util

from tests.files import one_device, training_state


@pytest.mark.parametrize(
    ("name", "mechanism"),
    [
        ("one_device", preemption.OWN),
        ("mirrored", preemption.OWN),
        ("multi_worker_mirrored", preemption.TF_HANDLER),
        ("tpu", preemption.TF_HANDLER),
    ],
)
def test_each_strategy_gets_its_mechanism(name, mechanism):
    assert preemption.mechanism_for(name) == mechanism


def test_the_platforms_where_tfs_handler_watches_nothing_are_tfs_names():
    platforms = {p.name for p in failure_handling_util.PlatformDevice}
    assert preemption.TF_HANDLER_INERT_PLATFORMS <= platforms
    assert not preemption.tf_handler_watches("GCE_CPU")
    assert not preemption.tf_handler_watches("GCE_TPU")
    for watching in ("GCE_GPU", "INTERNAL_CPU", "INTERNAL_GPU", "INTERNAL_TPU"):
        assert preemption.tf_handler_watches(watching), watching


@pytest.mark.parametrize(
    ("stopped_by", "status"),
    [
        (None, 0),
        ("SIGTERM", 143),
        ("SIGINT", 130),
        (preemption.PREEMPTION_NOTICE, 143),
        (preemption.OTHER_WORKER, 143),
    ],
)
def test_exit_status_of_each_way_to_stop(stopped_by, status):
    assert train.exit_status({"stopped_by": stopped_by}) == status


def _state(workdir):
    """`(state, step)` of a tiny run in `workdir`; nothing is restored yet."""
    state, _, _, step = training_state(workdir, keep=5)
    return state, step


def _run(state, step, watch, *, signal_at, signum=signal.SIGTERM, steps=10):
    """The training loop's skeleton; sends `signum` to this process after step `signal_at`."""
    while int(step.numpy()) < steps and not watch.should_stop():
        step.assign_add(1)
        if int(step.numpy()) == signal_at:
            os.kill(os.getpid(), signum)
        state.save()
        watch.after_step()
    watch.end()
    state.save(force=True)
    return int(step.numpy())


@pytest.fixture
def default_handlers():
    yield
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def test_own_mechanism_stops_at_the_next_step_on_sigterm(tmp_path, default_handlers):
    state, step = _state(tmp_path)
    watch = preemption.Watch(one_device(), state).install()
    try:
        assert watch.mechanism == preemption.OWN
        assert signal.getsignal(signal.SIGTERM) == watch._stop._handle
        stopped_at = _run(state, step, watch, signal_at=3)
    finally:
        watch.uninstall()
    assert stopped_at == 3 and watch.stopped_by == "SIGTERM"
    assert train.exit_status({"stopped_by": watch.stopped_by}) == 143
    assert (tmp_path / "checkpoints" / "ckpt-3.index").exists()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_mirrored_keeps_the_own_mechanism(tmp_path, default_handlers):
    state, _ = _state(tmp_path)
    watch = preemption.Watch(tf.distribute.MirroredStrategy(["/cpu:0"]), state).install()
    watch.uninstall()
    assert watch.mechanism == preemption.OWN


def test_tf_handler_restores_nothing_over_ours_and_saves_at_the_step_it_stops(
    tmp_path, default_handlers
):
    first, step = _state(tmp_path)
    for _ in range(2):
        step.assign_add(1)
        first.save(force=True)
    with open(tmp_path / "checkpoints" / "ckpt-2.data-00000-of-00001", "r+b") as f:
        f.truncate(8)  # damaged: our restore falls back to step 1
    state, step = _state(tmp_path)
    assert state.restore() == 1

    watch = preemption.Watch(one_device(), state, mechanism=preemption.TF_HANDLER).install()
    try:
        assert watch.mechanism == preemption.TF_HANDLER
        assert int(step.numpy()) == 1  # its constructor restored nothing
        # Off GCE it owns SIGTERM (wrapped to name it); Ctrl-C stays ours.
        assert signal.getsignal(signal.SIGINT) == watch._stop._handle
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, watch._stop._handle)
        handler_dir = watch._handler_dir
        stopped_at = _run(state, step, watch, signal_at=4)
    finally:
        watch.uninstall()
    # It agrees on the step after the one that saw the signal, saves it and stops.
    assert stopped_at == 5 and watch.stopped_by == "SIGTERM"
    assert train.exit_status({"stopped_by": watch.stopped_by}) == 143
    saved = tf.train.get_checkpoint_state(str(tmp_path / "checkpoints"))
    assert saved.model_checkpoint_path.endswith("ckpt-5")
    # Our checkpoints hold what they held: its counter lives in its own checkpoint.
    names = tf.train.load_checkpoint(saved.model_checkpoint_path).get_variable_to_shape_map()
    assert not any("checkpointed_runs" in name for name in names)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert not os.path.exists(handler_dir)
    # The next start resumes from that step.
    assert _state(tmp_path)[0].restore() == 5


def test_ctrl_c_goes_to_the_own_handler_beside_tfs(tmp_path, default_handlers):
    state, step = _state(tmp_path)
    watch = preemption.Watch(one_device(), state, mechanism=preemption.TF_HANDLER).install()
    try:
        stopped_at = _run(state, step, watch, signal_at=2, signum=signal.SIGINT)
        assert stopped_at == 2 and watch.stopped_by == "SIGINT"
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C interrupts at once
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        watch.uninstall()
    assert train.exit_status({"stopped_by": watch.stopped_by}) == 130


class _Metadata(http.server.BaseHTTPRequestHandler):
    """A GCE metadata server's answer to "am I on GCP?" (`instance/hostname`)."""

    def do_GET(self):  # noqa: N802
        body = b"vm-1"
        self.send_response(200)
        self.send_header("Metadata-Flavor", "Google")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_on_a_gce_cpu_vm_tfs_handler_watches_nothing_so_the_own_one_serves(
    tmp_path, monkeypatch, caplog, default_handlers
):
    """TF makes its handler inert on GCE CPU and TPU VMs (a Cloud TPU VM): ours takes over."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Metadata)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("GCE_METADATA_IP", f"127.0.0.1:{server.server_port}")
    caplog.set_level("INFO", logger="absl")
    state, step = _state(tmp_path)
    try:
        watch = preemption.Watch(one_device(), state, mechanism=preemption.TF_HANDLER).install()
    finally:
        server.shutdown()
    assert "it watches nothing on GCE_CPU" in caplog.text
    try:
        assert watch.mechanism == preemption.OWN
        assert signal.getsignal(signal.SIGTERM) == watch._stop._handle
        stopped_at = _run(state, step, watch, signal_at=2)
    finally:
        watch.uninstall()
    assert stopped_at == 2 and watch.stopped_by == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
