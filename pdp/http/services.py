"""The one services object of a running broker (`Broker`): what every handler reaches
through `broker_of(request)`. It sits below every API module, so none of them imports the
app that assembles it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from pdp.admin.auth import AddressLimiter, AdminReviewer
from pdp.admin.tokens import TokenFile
from pdp.attestation.identity import Attestor
from pdp.attestation.kube import ApiServerCalls
from pdp.audit import Auditor
from pdp.config import BrokerConfig
from pdp.exchange import TokenExchange
from pdp.metrics import BrokerMetrics
from pdp.opa import OPAClient
from pdp.revocation.events import EventHub
from pdp.revocation.index import RevocationIndex
from pdp.revocation.podwatch import PodWatch
from pdp.shadow.live import LiveShadow
from pdp.store.base import Store
from pdp.tokens import KeyRing


@dataclass
class Broker:
    """Everything one running broker holds."""

    config: BrokerConfig
    store: Store
    keys: KeyRing
    revocations: RevocationIndex
    auditor: Auditor
    metrics: BrokerMetrics
    opa: OPAClient
    attestor: Attestor
    admin: TokenFile                           # --admin-token-file
    exchange: TokenExchange
    clock: Callable[[], float] = time.time
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    shadow: LiveShadow | None = None
    hub: EventHub | None = None                 # the revocation event stream's fan-out
    readers: TokenFile | None = None            # --reader-token-file: introspection and the event stream
    reviewer: AdminReviewer | None = None       # Kubernetes identities as admins and readers
    apiserver: ApiServerCalls | None = None     # the bounded pool every API-server call runs on
    review_limiter: AddressLimiter | None = None  # API-server reviews a client address may cause
    podwatch: PodWatch | None = None            # deleted pods lose their tokens
    reads_recorded: dict[tuple[str, str], float] = field(default_factory=dict)  # (admin, action) -> when
    last_key_reload: float = 0.0


def broker_of(request: Request) -> Broker:
    broker: Broker = request.app.state.broker
    return broker
