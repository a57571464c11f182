"""End to end: a real ``celery worker`` (prefork, 2 processes) storing results
through ``rawdb+...`` on every dialect, read back by a client app.

The broker is RabbitMQ (``RAWBACKEND_TEST_BROKER_URL``, default the local
one), on a queue of the worker's own so that parallel runs never take each
other's messages, deleted after; where no broker answers, kombu's
``filesystem://`` transport (and, with RAWBACKEND_REQUIRE_SERVERS=1, a failure:
CI has RabbitMQ). The result tables are the test's own (conftest's
``Database``). One worker per dialect serves every test of a module; it is
always stopped (SIGTERM, then SIGKILL of its process group after a bounded wait).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from celery import chord, group, states

from conftest import DIALECTS, REQUIRE_SERVERS, Database, _drop, make_database

pytestmark = pytest.mark.slow

TIMEOUT = 30  # seconds, for every wait on the worker
WORKER_NAME = "e2e@testhost"
BROKER_URL = os.environ.get("RAWBACKEND_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
_broker_problem: dict[str, str | None] = {}


def broker_problem(url: str = BROKER_URL) -> str | None:
    """Why the broker at ``url`` can't be used, or None when it answers."""
    if url not in _broker_problem:
        from kombu import Connection

        try:
            with Connection(url, connect_timeout=3) as conn:
                conn.ensure_connection(max_retries=1)
            _broker_problem[url] = None
        except Exception as exc:  # any failure to connect
            _broker_problem[url] = f"no broker answers at {url}: {exc!r}"
    return _broker_problem[url]

TASKS_MODULE = textwrap.dedent(
    '''
    """Tasks for the end-to-end test; the app's conf comes from conf.json."""
    import json
    import os

    from celery import Celery

    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf.json")) as f:
        CONF = json.load(f)

    app = Celery("tasksmod")
    app.conf.update(CONF)


    @app.task
    def add(x, y):
        return x + y


    @app.task
    def fail(message):
        raise ValueError(message)


    @app.task
    def tsum(values):
        return sum(values)
    '''
)


class Worker:
    """A ``celery worker`` subprocess and the client side of its set-up."""

    def __init__(self, db: Database, workdir: Path):
        self.db = db
        self.workdir = workdir
        self.log_path = workdir / "worker.log"
        # A queue of this worker's own: another run on the same broker never
        # takes its messages.
        self.queue = f"e2e-{uuid.uuid4().hex}"
        problem = broker_problem()
        if problem is None:
            self.broker_url = BROKER_URL
            broker_conf = {"broker_url": BROKER_URL}
        elif REQUIRE_SERVERS:
            pytest.fail(f"{problem} (RAWBACKEND_REQUIRE_SERVERS=1: CI has RabbitMQ)")
        else:
            self.broker_url = "filesystem://"
            broker = workdir / "broker"
            broker.mkdir()
            (workdir / "processed").mkdir()
            broker_conf = {
                "broker_url": "filesystem://",
                "broker_transport_options": {
                    "data_folder_in": str(broker),
                    "data_folder_out": str(broker),
                    "processed_folder": str(workdir / "processed"),
                    "store_processed": False,
                    "polling_interval": 0.05,
                    # kombu writes fanout exchanges here (cwd/control by default).
                    "control_folder": str(workdir / "control"),
                },
            }
        self.conf = {
            **broker_conf,
            "task_default_queue": self.queue,
            "result_extended": True,
            "result_chord_join_timeout": 10,
            "worker_enable_remote_control": False,
            "worker_hijack_root_logger": True,
        }
        self.clients: list = []
        worker_conf = db.conf(result_backend="rawdb+" + db.url, **self.conf)
        (workdir / "conf.json").write_text(json.dumps(worker_conf))
        (workdir / "tasksmod.py").write_text(TASKS_MODULE)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(self.workdir), PYTHONUNBUFFERED="1")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "celery", "-A", "tasksmod", "worker",
                    "--pool", "prefork", "--concurrency", "2", "--loglevel", "INFO",
                    "-n", WORKER_NAME, "-Q", self.queue, "--without-gossip", "--without-mingle",
                    "--without-heartbeat",
                ],
                cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Its own process group, so that a kill reaches the pool's children.
                start_new_session=True,
            )
        deadline = time.monotonic() + TIMEOUT
        while f"{WORKER_NAME} ready." not in self.log():
            if self.proc.poll() is not None:
                raise AssertionError(f"the worker exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the worker was not ready within {TIMEOUT}s:\n{self.log()}")
            time.sleep(0.1)

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                proc.terminate()  # warm shutdown
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            # Whatever is left of the worker's process group (pool children).
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            self._delete_queue()

    def _delete_queue(self) -> None:
        for app in self.clients:
            app.close()  # the clients' broker connections
        if self.broker_url.startswith("filesystem"):
            return
        from kombu import Connection

        with Connection(self.broker_url, connect_timeout=3) as conn:
            conn.default_channel.queue_delete(self.queue)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def client(self, **conf):
        """A client app on the same broker, queue and result tables."""
        app = self.db.app(**{**self.conf, **conf})
        self.clients.append(app)
        return app


def _dialect_params():
    return [
        pytest.param(d, marks=getattr(pytest.mark, d)) if d != "sqlite" else d for d in DIALECTS
    ]


@pytest.fixture(scope="module", params=_dialect_params())
def running_worker(request, tmp_path_factory):
    """One worker per dialect, on tables of its own, for every test below."""
    workdir = tmp_path_factory.mktemp(f"e2e-{request.param}")
    db = make_database(request.param, workdir)
    worker = Worker(db, workdir)
    try:
        worker.start()
        yield worker
    finally:
        try:
            worker.stop()
        finally:
            _drop(db)


@pytest.fixture
def worker(running_worker):
    """The module's worker; its log of this test is printed when the test fails."""
    start = len(running_worker.log())
    yield running_worker
    if running_worker.proc.poll() is not None:
        print(f"the worker has exited with {running_worker.proc.returncode}")
    print("---- worker log during this test ----")
    print(running_worker.log()[start:])


def test_task_returns_value(worker):
    """A task's return value comes back through .get(), stored in the test's own table."""
    app = worker.client(result_extended=False)
    result = app.send_task("tasksmod.add", (2, 3))
    assert result.get(timeout=TIMEOUT) == 5
    assert result.state == states.SUCCESS
    db = worker.db
    rows = db.query(
        f"SELECT status FROM {db.qualified(db.task_table)} WHERE task_id = '{result.id}'"
    )
    assert rows == [(states.SUCCESS,)]


def test_failing_task(worker):
    """A task's exception comes back as an instance of its type, with its message and traceback."""
    app = worker.client(result_extended=False)
    message = f"boom {uuid.uuid4().hex[:8]}"
    result = app.send_task("tasksmod.fail", (message,))
    exc = result.get(timeout=TIMEOUT, propagate=False)
    assert type(exc) is ValueError
    assert str(exc) == message
    assert result.state == states.FAILURE
    assert type(result.result) is ValueError and str(result.result) == message
    assert "Traceback (most recent call last)" in result.traceback
    assert f"ValueError: {message}" in result.traceback
    with pytest.raises(ValueError, match=message):
        result.get(timeout=TIMEOUT)


def test_group_joined_by_client(worker):
    """A group's results are joined by the client, in order."""
    app = worker.client(result_extended=False)
    result = group(app.signature("tasksmod.add", (i, i)) for i in range(5))()
    assert result.get(timeout=TIMEOUT) == [0, 2, 4, 6, 8]
    assert all(child.state == states.SUCCESS for child in result.results)


def test_chord_without_chord_unlock(worker):
    """A chord completes natively: its last part sends the body, and no
    celery.chord_unlock task is ever sent (more in test_chords.py)."""
    app = worker.client(result_extended=False)
    header = [app.signature("tasksmod.add", (i, 10)) for i in range(3)]
    result = chord(header)(app.signature("tasksmod.tsum"))
    assert result.get(timeout=TIMEOUT) == 10 + 11 + 12
    assert result.parent is not None
    assert result.parent.get(timeout=TIMEOUT) == [10, 11, 12]
    assert "tasksmod.tsum" in worker.log()
    assert "celery.chord_unlock" not in worker.log()


def test_extended_result_through_worker(worker):
    """With result_extended, the worker stores name, args, kwargs, worker and queue."""
    app = worker.client(result_extended=True)
    sent = app.send_task("tasksmod.add", args=(7,), kwargs={"y": 8})
    assert sent.get(timeout=TIMEOUT) == 15
    result = app.AsyncResult(sent.id)
    assert result.name == "tasksmod.add"
    assert result.args == [7]
    assert result.kwargs == {"y": 8}
    assert result.worker == WORKER_NAME
    assert result.queue == worker.queue
    meta = app.backend.get_task_meta(sent.id)
    assert meta["status"] == states.SUCCESS
    assert meta["result"] == 15
    assert meta["retries"] == 0
    assert (meta["name"], meta["worker"], meta["queue"]) == ("tasksmod.add", WORKER_NAME, worker.queue)


def test_group_of_20_joined_natively(worker):
    """GroupResult.get() of a group of 20 joins natively (get_many) and returns
    every value in order."""
    app = worker.client(result_extended=False)
    result = group(app.signature("tasksmod.add", (i, 1)) for i in range(20))()
    assert result.supports_native_join
    assert result.get(timeout=TIMEOUT) == [i + 1 for i in range(20)]
    assert result.join_native(timeout=TIMEOUT) == [i + 1 for i in range(20)]


def test_delay_get_latency(worker):
    """For the report, not asserted: the median of 10 ``add.delay(1, 1).get()``
    round trips through the worker (broker polling included)."""
    app = worker.client(result_extended=False)
    app.send_task("tasksmod.add", (0, 0)).get(timeout=TIMEOUT)  # warm
    spans = []
    for _ in range(10):
        t0 = time.perf_counter()
        assert app.send_task("tasksmod.add", (1, 1)).get(timeout=TIMEOUT) == 2
        spans.append(time.perf_counter() - t0)
    spans.sort()
    median = (spans[4] + spans[5]) / 2
    print(f"delay().get() through the worker on {worker.db.dialect}: median {median * 1000:.0f} ms "
          f"(min {spans[0] * 1000:.0f}, max {spans[-1] * 1000:.0f})")
