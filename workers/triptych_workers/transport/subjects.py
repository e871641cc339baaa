"""Every NATS subject the runtime uses, built in one place.

Layout: ``triptych.<namespace>.<deployment>.<role>.<verb>`` for a role's pool (a queue group, so each request
goes to one worker), ``...<role>.worker.<worker-id>.<verb>`` for one worker (cache-aware routing targets the
encode worker that holds an item), ``...<role>.worker.<worker-id>.control`` for that worker's cancellations,
``...<role>.cancel`` for cancellations whose worker is not yet known, ``...<role>.load`` for heartbeats, and
``...data.<producer>.<op>`` for the data plane's control messages. Tokens are checked so that a name with a
dot or a wildcard can never widen a subscription to another deployment's traffic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
# Suffixes with a meaning of their own under a role or a worker; a verb may not take them.
RESERVED_VERBS = frozenset({"worker", "control", "cancel", "load"})


def check_token(value: str, what: str) -> str:
    """Return ``value`` if it is one safe subject token, else raise ``ValueError`` naming ``what``."""
    if not _TOKEN.match(value):
        raise ValueError(f"{what} {value!r} is not a subject token ([A-Za-z0-9_-], 1-128 characters)")
    return value


@dataclass(frozen=True)
class Subjects:
    """Subject builder for one deployment (``namespace``/``deployment`` as the operator names them)."""

    namespace: str
    deployment: str
    prefix: str = "triptych"

    def __post_init__(self) -> None:
        check_token(self.prefix, "prefix")
        check_token(self.namespace, "namespace")
        check_token(self.deployment, "deployment")

    @property
    def root(self) -> str:
        return f"{self.prefix}.{self.namespace}.{self.deployment}"

    def role(self, role: str, verb: str) -> str:
        """The pool subject: workers of ``role`` subscribe in the queue group ``queue_group(role)``."""
        return f"{self.root}.{check_token(role, 'role')}.{self._verb(verb)}"

    def queue_group(self, role: str) -> str:
        return f"{self.prefix}-{self.namespace}-{self.deployment}-{check_token(role, 'role')}"

    def worker(self, role: str, worker_id: str, verb: str) -> str:
        """One worker's direct subject for ``verb`` (no queue group: exactly that worker gets it)."""
        return f"{self._worker_root(role, worker_id)}.{self._verb(verb)}"

    def control(self, role: str, worker_id: str) -> str:
        """One worker's control subject: cancellations of requests it accepted."""
        return f"{self._worker_root(role, worker_id)}.control"

    def role_cancel(self, role: str) -> str:
        """Cancellations for a request not yet acknowledged: every worker of the role listens."""
        return f"{self.root}.{check_token(role, 'role')}.cancel"

    def load(self, role: str) -> str:
        """Heartbeats/load announcements of ``role``'s workers (the frontend subscribes)."""
        return f"{self.root}.{check_token(role, 'role')}.load"

    def data(self, producer: str, op: str) -> str:
        """The data plane's control messages to ``producer`` (``meta``, ``fetch``, ``release``)."""
        return f"{self.root}.data.{check_token(producer, 'producer')}.{check_token(op, 'op')}"

    def _worker_root(self, role: str, worker_id: str) -> str:
        return f"{self.root}.{check_token(role, 'role')}.worker.{check_token(worker_id, 'worker id')}"

    @staticmethod
    def _verb(verb: str) -> str:
        check_token(verb, "verb")
        if verb in RESERVED_VERBS:
            raise ValueError(f"verb {verb!r} is reserved")
        return verb
