"""The request plane: request / streamed reply over NATS, with deadlines, cancellation and bounded workers.

A call, end to end::

    caller                                   worker (one of the role's queue group, or a direct subject)
    publish(subject, payload,                on message: deadline passed?  -> error "expired"
            reply=<inbox>, headers:                      local queue full? -> error "busy" (caller retries
            tt-id, tt-deadline)                                               another worker)
                                                         else enqueue      -> "accepted" (worker id)
    <inbox> <- accepted | chunk* | end | error   a consumer task runs the handler under the deadline and
    caller closes early / deadline passes           publishes each yielded chunk, then "end" or "error"
      -> cancel(id) on the worker's control      control message -> the handler's task is cancelled (the
         subject (or the role's if not yet          handler sees CancelledError) or the queued entry dropped
         accepted)

Every reply carries ``tt-kind``; an explicit end (or error) closes a stream, so a lost worker shows up as a
``RequestTimeout`` at the caller's deadline, never as a truncated success. The deadline travels as wall-clock
epoch seconds (``tt-deadline``) because monotonic clocks are per host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from triptych_workers.transport.connection import NatsConnection
from triptych_workers.transport.errors import (
    DeadlineExpired,
    NoResponders,
    RemoteError,
    RequestCancelled,
    RequestTimeout,
    TransportError,
    WorkerBusy,
    WorkerLost,
)
from triptych_workers.transport.metrics import TransportMetrics
from triptych_workers.transport.subjects import Subjects

log = logging.getLogger(__name__)

# Envelope headers. Application headers pass through beside them; these names are reserved.
H_ID = "tt-id"
H_DEADLINE = "tt-deadline"
H_KIND = "tt-kind"
H_WORKER = "tt-worker"
H_CODE = "tt-code"
H_VERB = "tt-verb"

KIND_ACCEPTED = "accepted"
KIND_CHUNK = "chunk"
KIND_END = "end"
KIND_ERROR = "error"
# Sent by a worker every ``keepalive_interval_s`` for each request it holds (queued or running), so a caller
# tells a slow worker from a dead one long before the request's deadline.
KIND_KEEPALIVE = "keepalive"
DEFAULT_LIVENESS_TIMEOUT_S = 5.0

CODE_BUSY = "busy"
CODE_EXPIRED = "expired"
CODE_CANCELLED = "cancelled"
CODE_INTERNAL = "internal"
CODE_UNKNOWN_VERB = "unknown_verb"

_MAX_ERROR_TEXT = 500  # error messages are truncated: a traceback must not become a multi-KiB NATS message


@dataclass(frozen=True)
class Request:
    """What a worker's handler receives."""

    id: str
    verb: str
    payload: bytes
    headers: Mapping[str, str]
    deadline: float  # wall-clock epoch seconds

    def remaining(self) -> float:
        return self.deadline - time.time()


@dataclass(frozen=True)
class Reply:
    """One chunk of a streamed reply, with the worker that produced it."""

    data: bytes
    headers: Mapping[str, str]
    worker_id: str


Handler = Callable[[Request], AsyncIterator[bytes]]
"""A worker's handler: an async generator yielding reply chunks. Cancellation arrives as CancelledError."""


def _error_from(headers: Mapping[str, str], data: bytes) -> TransportError:
    code = headers.get(H_CODE, CODE_INTERNAL)
    worker = headers.get(H_WORKER, "")
    text = data.decode("utf-8", "replace")
    if code == CODE_BUSY:
        return WorkerBusy(f"worker {worker} is busy: {text}", worker_id=worker)
    if code == CODE_CANCELLED:
        return RequestCancelled(text, code=code, worker_id=worker)
    if code == CODE_EXPIRED:
        return DeadlineExpired(text, code=code, worker_id=worker)
    return RemoteError(text, code=code, worker_id=worker)


class ReplyStream:
    """The caller's side of one request: an async iterator of ``Reply`` chunks.

    Use it as ``async with client.stream(...) as replies: async for reply in replies: ...`` so that leaving
    early (break, exception, task cancellation) cancels the work on the worker at once rather than when the
    garbage collector finalizes a generator.
    """

    def __init__(
        self,
        conn: NatsConnection,
        subjects: Subjects,
        *,
        role: str,
        subject: str,
        payload: bytes,
        headers: Mapping[str, str],
        timeout_s: float,
        liveness_timeout_s: float = DEFAULT_LIVENESS_TIMEOUT_S,
    ) -> None:
        self._conn = conn
        self._subjects = subjects
        self._role = role
        self._liveness_timeout_s = liveness_timeout_s
        self._last_heard = time.monotonic()
        self._subject = subject
        self._payload = payload
        self._headers = dict(headers)
        self.id = uuid.uuid4().hex
        self.deadline = time.time() + timeout_s
        self._deadline_mono = time.monotonic() + timeout_s
        self._sub: Subscription | None = None
        # The inbox's messages, put here by the subscription's callback: waiting on a queue under
        # asyncio.timeout costs no task per message (nats-py's next_msg makes two).
        self._inbox: asyncio.Queue[Msg] = asyncio.Queue()
        self.worker_id: str | None = None
        self._done = False

    async def __aenter__(self) -> ReplyStream:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def open(self) -> None:
        if self._sub is not None:
            return
        nc = self._conn.client
        inbox = nc.new_inbox()
        self._sub = await nc.subscribe(inbox, cb=self._received)
        headers = {**self._headers, H_ID: self.id, H_DEADLINE: f"{self.deadline:.6f}"}
        await nc.publish(self._subject, self._payload, reply=inbox, headers=headers)

    def __aiter__(self) -> ReplyStream:
        return self

    async def __anext__(self) -> Reply:
        if self._done:
            raise StopAsyncIteration
        await self.open()
        assert self._sub is not None
        while True:
            if self._closed():
                self._done = True
                raise TransportError("NATS connection closed while waiting for a reply")
            now = time.monotonic()
            remaining = self._deadline_mono - now
            if remaining <= 0:
                await self._give_up()
                raise RequestTimeout(f"no complete reply from {self._subject} within the deadline")
            silent_for = now - self._last_heard
            if silent_for >= self._liveness_timeout_s:
                await self._give_up()
                who = f"worker {self.worker_id}" if self.worker_id else "no worker"
                raise WorkerLost(
                    f"nothing from {who} on {self._subject} for {silent_for:.1f} s (gone or stuck)"
                )
            try:
                async with asyncio.timeout(min(remaining, self._liveness_timeout_s - silent_for)):
                    msg = await self._inbox.get()
            except TimeoutError:
                continue  # loop re-checks the connection, the deadline and liveness, and raises
            headers = dict(msg.headers or {})
            if headers.get("Status") == "503":  # the server's "no responders" answer
                self._done = True
                raise NoResponders(f"no worker subscribes to {self._subject}")
            kind = headers.get(H_KIND)
            worker = headers.get(H_WORKER, "")
            self._last_heard = time.monotonic()
            if worker and kind != KIND_ERROR:
                # Any message names the worker (a first chunk may overtake "accepted"): cancel goes there.
                self.worker_id = worker
            if kind in (KIND_ACCEPTED, KIND_KEEPALIVE):
                continue
            if kind == KIND_CHUNK:
                return Reply(data=msg.data, headers=headers, worker_id=worker)
            if kind == KIND_END:
                self._done = True
                await self._unsubscribe()
                raise StopAsyncIteration
            if kind == KIND_ERROR:
                self._done = True
                await self._unsubscribe()
                raise _error_from(headers, msg.data)
            log.debug("ignoring reply without a known tt-kind on %s: %r", self._subject, kind)

    async def _received(self, msg: Msg) -> None:
        self._inbox.put_nowait(msg)

    def _closed(self) -> bool:
        try:
            return bool(self._conn.client.is_closed)
        except TransportError:
            return True

    async def aclose(self) -> None:
        """Stop waiting; if the worker may still be working on it, tell it to stop."""
        if not self._done:
            await self._give_up()
        await self._unsubscribe()

    async def cancel(self) -> None:
        await self.aclose()

    async def _give_up(self) -> None:
        self._done = True
        with contextlib.suppress(TransportError, nats.errors.Error):
            nc = self._conn.client
            target = (
                self._subjects.control(self._role, self.worker_id)
                if self.worker_id
                else self._subjects.role_cancel(self._role)
            )
            await nc.publish(target, self.id.encode())

    async def _unsubscribe(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()


class RequestClient:
    """Sends requests to a role's pool or to one of its workers."""

    def __init__(self, conn: NatsConnection, subjects: Subjects) -> None:
        self._conn = conn
        self.subjects = subjects

    def stream(
        self,
        role: str,
        verb: str,
        payload: bytes,
        *,
        timeout_s: float,
        worker_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        liveness_timeout_s: float = DEFAULT_LIVENESS_TIMEOUT_S,
    ) -> ReplyStream:
        """A streamed request; ``worker_id`` targets that worker's direct subject instead of the pool.
        ``WorkerLost`` ends it when nothing (not even a keepalive) arrives for ``liveness_timeout_s``."""
        subject = self.subjects.worker(role, worker_id, verb) if worker_id else self.subjects.role(role, verb)
        return ReplyStream(
            self._conn,
            self.subjects,
            role=role,
            subject=subject,
            payload=payload,
            headers={**(headers or {}), H_VERB: verb},
            timeout_s=timeout_s,
            liveness_timeout_s=liveness_timeout_s,
        )

    async def call(
        self,
        role: str,
        verb: str,
        payload: bytes,
        *,
        timeout_s: float,
        worker_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> list[Reply]:
        """A request whose whole reply is wanted at once (every chunk, in order)."""
        async with self.stream(
            role, verb, payload, timeout_s=timeout_s, worker_id=worker_id, headers=headers
        ) as replies:
            return [reply async for reply in replies]


@dataclass
class _Queued:
    request: Request
    reply: str


@dataclass(frozen=True)
class WorkerLoad:
    """One worker's heartbeat, as the frontend's ``LoadBoard`` keeps it."""

    worker_id: str
    role: str
    queue_depth: int
    in_flight: int
    concurrency: int
    queue_capacity: int
    cache_keys: tuple[str, ...] = ()
    leaving: bool = False
    received: float = field(default_factory=time.monotonic)

    @property
    def load(self) -> int:
        return self.queue_depth + self.in_flight

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "worker_id": self.worker_id,
                "role": self.role,
                "queue_depth": self.queue_depth,
                "in_flight": self.in_flight,
                "concurrency": self.concurrency,
                "queue_capacity": self.queue_capacity,
                "cache_keys": list(self.cache_keys),
                "leaving": self.leaving,
            }
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> WorkerLoad:
        raw: dict[str, Any] = json.loads(data)
        return cls(
            worker_id=str(raw["worker_id"]),
            role=str(raw["role"]),
            queue_depth=int(raw["queue_depth"]),
            in_flight=int(raw["in_flight"]),
            concurrency=int(raw["concurrency"]),
            queue_capacity=int(raw["queue_capacity"]),
            cache_keys=tuple(str(k) for k in raw.get("cache_keys", ())),
            leaving=bool(raw.get("leaving", False)),
        )


@dataclass(frozen=True)
class WorkerSettings:
    """A worker's limits. ``concurrency`` handlers run at once; up to ``queue_capacity`` more wait."""

    concurrency: int = 1
    queue_capacity: int = 8
    heartbeat_interval_s: float = 1.0
    keepalive_interval_s: float = 1.0
    drain_timeout_s: float = 10.0


class WorkerServer:
    """Serves one role's verbs for one worker: pool + direct subjects, a bounded local queue, heartbeats."""

    def __init__(
        self,
        conn: NatsConnection,
        subjects: Subjects,
        role: str,
        worker_id: str,
        handlers: Mapping[str, Handler],
        *,
        settings: WorkerSettings | None = None,
        metrics: TransportMetrics | None = None,
        cache_keys: Callable[[], Sequence[str]] | None = None,
    ) -> None:
        self._conn = conn
        self.subjects = subjects
        self.role = role
        self.worker_id = worker_id
        self._handlers = dict(handlers)
        self.settings = settings or WorkerSettings()
        self._metrics = metrics
        self._cache_keys = cache_keys
        # Validate every subject now, so a bad verb fails at construction rather than at start().
        for verb in self._handlers:
            subjects.role(role, verb)
            subjects.worker(role, worker_id, verb)
        # Unbounded: the bound is on accepted work (running + queued, see _on_request), not on this queue,
        # which also holds, for an instant, requests an idle consumer has not yet taken.
        self._queue: asyncio.Queue[_Queued] = asyncio.Queue()
        self._cancelled_queued: set[str] = set()
        self._queued_ids: set[str] = set()  # asyncio.Queue has no public view of its items
        self._running: dict[str, asyncio.Task[None]] = {}
        self._held: dict[str, str] = {}  # request id -> reply subject, from "accepted" until the last reply
        self._subs: list[Subscription] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._accepting = False

    @property
    def queue_depth(self) -> int:
        """Requests accepted and waiting for a free slot (cancelled ones not counted): the role's queue
        depth. A request in the queue while a consumer is idle is about to run, not waiting."""
        waiting = self._queue.qsize() - len(self._cancelled_queued)
        idle = self.settings.concurrency - len(self._running)
        return max(0, waiting - max(0, idle))

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def load(self, *, leaving: bool = False) -> WorkerLoad:
        keys = tuple(self._cache_keys()) if self._cache_keys else ()
        return WorkerLoad(
            worker_id=self.worker_id,
            role=self.role,
            queue_depth=self.queue_depth,
            in_flight=self.in_flight,
            concurrency=self.settings.concurrency,
            queue_capacity=self.settings.queue_capacity,
            cache_keys=keys,
            leaving=leaving,
        )

    async def start(self) -> None:
        nc = self._conn.client
        self._accepting = True
        group = self.subjects.queue_group(self.role)
        for verb in self._handlers:
            self._subs.append(
                await nc.subscribe(self.subjects.role(self.role, verb), group, self._on_request)
            )
            self._subs.append(
                await nc.subscribe(self.subjects.worker(self.role, self.worker_id, verb), cb=self._on_request)
            )
        self._subs.append(
            await nc.subscribe(self.subjects.control(self.role, self.worker_id), cb=self._on_cancel)
        )
        self._subs.append(await nc.subscribe(self.subjects.role_cancel(self.role), cb=self._on_cancel))
        await nc.flush()
        for i in range(self.settings.concurrency):
            self._tasks.append(asyncio.create_task(self._consume(), name=f"{self.worker_id}-consumer-{i}"))
        self._tasks.append(asyncio.create_task(self._heartbeat(), name=f"{self.worker_id}-heartbeat"))
        self._tasks.append(asyncio.create_task(self._keepalive(), name=f"{self.worker_id}-keepalive"))
        self._publish_gauges()

    async def close(self) -> None:
        """Stop taking work, let queued and running requests finish within the drain timeout, cancel the
        rest, and announce that this worker is leaving."""
        self._accepting = False
        for sub in self._subs[: 2 * len(self._handlers)]:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        # join() returns once every accepted request has been run (task_done follows each run).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout=self.settings.drain_timeout_s)
        for task in list(self._running.values()):
            task.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._running.values(), return_exceptions=True)
        self._tasks.clear()
        with contextlib.suppress(TransportError, nats.errors.Error):
            await self._conn.client.publish(self.subjects.load(self.role), self.load(leaving=True).to_json())
        for sub in self._subs[2 * len(self._handlers) :]:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        self._subs.clear()

    async def _on_request(self, msg: Msg) -> None:
        headers = dict(msg.headers or {})
        request_id = headers.get(H_ID) or uuid.uuid4().hex
        verb = headers.get(H_VERB) or msg.subject.rsplit(".", 1)[-1]
        if not msg.reply:
            log.warning("dropping a request on %s without a reply subject", msg.subject)
            return
        try:
            deadline = float(headers.get(H_DEADLINE, "inf"))
        except ValueError:
            deadline = float("inf")
        if deadline <= time.time():
            await self._send(
                msg.reply,
                request_id,
                KIND_ERROR,
                b"deadline passed before the worker got it",
                code=CODE_EXPIRED,
            )
            return
        if verb not in self._handlers or not self._accepting:
            code = CODE_UNKNOWN_VERB if verb not in self._handlers else CODE_BUSY
            await self._send(msg.reply, request_id, KIND_ERROR, f"cannot take {verb!r}".encode(), code=code)
            return
        request = Request(id=request_id, verb=verb, payload=msg.data, headers=headers, deadline=deadline)
        # The bound counts what was accepted and has not ended, not the queue's length: a burst of messages
        # is handled in this callback without a yield, before any idle consumer takes one, so a bounded
        # queue would refuse a burst of queue_capacity + 1 requests while every consumer sat idle.
        accepted = self._queue.qsize() + len(self._running)
        if accepted >= self.settings.concurrency + self.settings.queue_capacity:
            if self._metrics:
                self._metrics.rejected.labels(self.role, self.subjects.deployment).inc()
            await self._send(
                msg.reply,
                request_id,
                KIND_ERROR,
                f"queue full ({self.settings.queue_capacity} waiting)".encode(),
                code=CODE_BUSY,
            )
            return
        self._queue.put_nowait(_Queued(request, msg.reply))
        self._queued_ids.add(request.id)
        self._publish_gauges()
        self._held[request.id] = msg.reply
        await self._send(msg.reply, request_id, KIND_ACCEPTED, b"")

    async def _on_cancel(self, msg: Msg) -> None:
        request_id = msg.data.decode("ascii", "replace")
        task = self._running.get(request_id)
        if task is not None:
            task.cancel()
        elif msg.subject == self.subjects.control(self.role, self.worker_id) or self._is_queued(request_id):
            self._cancelled_queued.add(request_id)
            self._publish_gauges()

    def _is_queued(self, request_id: str) -> bool:
        return request_id in self._queued_ids

    async def _consume(self) -> None:
        while True:
            item = await self._queue.get()
            request = item.request
            self._queued_ids.discard(request.id)
            try:
                if request.id in self._cancelled_queued:
                    self._cancelled_queued.discard(request.id)
                    continue
                if request.deadline <= time.time():
                    await self._send(
                        item.reply, request.id, KIND_ERROR, b"deadline passed in the queue", code=CODE_EXPIRED
                    )
                    continue
                task = asyncio.create_task(self._run(item), name=f"{self.worker_id}-{request.id}")
                self._running[request.id] = task
                self._publish_gauges()
                try:
                    # wait() (not await task): a request cancelled by its caller must not stop the consumer.
                    await asyncio.wait({task})
                except asyncio.CancelledError:
                    # The consumer itself is being stopped (close()): stop the request with it.
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    raise
                finally:
                    self._running.pop(request.id, None)
            finally:
                self._held.pop(request.id, None)
                self._queue.task_done()
                self._publish_gauges()

    async def _run(self, item: _Queued) -> None:
        request = item.request
        handler = self._handlers[request.verb]
        loop = asyncio.get_running_loop()
        when = loop.time() + max(0.0, request.remaining()) if request.deadline != float("inf") else None
        try:
            async with asyncio.timeout_at(when):
                async for chunk in handler(request):
                    await self._send(item.reply, request.id, KIND_CHUNK, chunk)
        except TimeoutError:
            await self._send(
                item.reply, request.id, KIND_ERROR, b"deadline passed while running", code=CODE_EXPIRED
            )
            return
        except asyncio.CancelledError:
            await self._send(item.reply, request.id, KIND_ERROR, b"cancelled", code=CODE_CANCELLED)
            raise
        except Exception as exc:
            log.exception("handler %s failed for request %s", request.verb, request.id)
            text = f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_TEXT]
            await self._send(
                item.reply, request.id, KIND_ERROR, text.encode(), code=getattr(exc, "code", CODE_INTERNAL)
            )
            return
        await self._send(item.reply, request.id, KIND_END, b"")

    async def _send(self, reply: str, request_id: str, kind: str, data: bytes, *, code: str = "") -> None:
        headers = {H_ID: request_id, H_KIND: kind, H_WORKER: self.worker_id}
        if code:
            headers[H_CODE] = code
        with contextlib.suppress(TransportError, nats.errors.Error):
            await self._conn.client.publish(reply, data, headers=headers)

    async def _heartbeat(self) -> None:
        while True:
            with contextlib.suppress(TransportError, nats.errors.Error):
                await self._conn.client.publish(self.subjects.load(self.role), self.load().to_json())
            await asyncio.sleep(self.settings.heartbeat_interval_s)

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(self.settings.keepalive_interval_s)
            for request_id, reply in list(self._held.items()):
                await self._send(reply, request_id, KIND_KEEPALIVE, b"")

    def _publish_gauges(self) -> None:
        if self._metrics:
            labels = (self.role, self.subjects.deployment)
            self._metrics.queue_depth.labels(*labels).set(self.queue_depth)
            self._metrics.in_flight.labels(*labels).set(self.in_flight)


class LoadBoard:
    """The frontend's view of a role's workers, kept from their heartbeats.

    A worker that misses heartbeats for ``max_age_s`` drops out, so routing never prefers a dead worker for
    longer than that; a worker that announces ``leaving`` drops out at once.
    """

    def __init__(
        self, conn: NatsConnection, subjects: Subjects, role: str, *, max_age_s: float = 3.0
    ) -> None:
        self._conn = conn
        self._subject = subjects.load(role)
        self.max_age_s = max_age_s
        self._workers: dict[str, WorkerLoad] = {}
        self._sub: Subscription | None = None
        self._changed = asyncio.Event()

    async def start(self) -> None:
        self._sub = await self._conn.client.subscribe(self._subject, cb=self._on_load)

    async def close(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    def workers(self) -> list[WorkerLoad]:
        """Workers heard from within ``max_age_s``, least loaded first."""
        now = time.monotonic()
        fresh = [w for w in self._workers.values() if now - w.received <= self.max_age_s]
        return sorted(fresh, key=lambda w: (w.load, w.worker_id))

    def holders(self, key: str) -> list[WorkerLoad]:
        """Fresh workers whose cache summary lists ``key`` (e.g. a media hash), least loaded first."""
        return [w for w in self.workers() if key in w.cache_keys]

    async def wait_for(self, predicate: Callable[[list[WorkerLoad]], bool], timeout_s: float) -> bool:
        """Wait (with a deadline) until ``predicate(workers())`` holds; False if it never did."""
        deadline = time.monotonic() + timeout_s
        while not predicate(self.workers()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=min(remaining, 0.1))
        return True

    async def _on_load(self, msg: Msg) -> None:
        try:
            load = WorkerLoad.from_json(msg.data)
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed heartbeat on %s", msg.subject)
            return
        if load.leaving:
            self._workers.pop(load.worker_id, None)
        else:
            self._workers[load.worker_id] = load
        self._changed.set()
