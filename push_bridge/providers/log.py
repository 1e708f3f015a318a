"""The embedded default: every push is one JSON line in the log, nothing leaves the machine."""

from __future__ import annotations

import json
import logging

from push_bridge.providers.base import Outcome, PushOutcome, PushProvider, PushRequest

log = logging.getLogger("pingpull.push")


class LogProvider(PushProvider):
    name = "log"

    async def send(self, request: PushRequest) -> PushOutcome:
        line = {
            "event": "push",
            "device_id": request.device_id,
            "provider": request.provider,
            "seq": request.seq,
        }
        log.info(json.dumps(line, separators=(",", ":")))
        return PushOutcome(Outcome.DELIVERED, reason="logged")
