"""Push payloads, pure: what APNs and FCM receive for one wake-up. No I/O, no trio.

Content-free by default: the push says only "your inbox head is N" so the app wakes, pulls over
HTTPS and shows what it decrypts itself; no message text ever transits Apple or Google. The visible
option shows a fixed, localisable "new message" alert, still without text.

Collapsing: every push for a device carries the same collapse key ("inbox"), so if several are
queued at Apple or Google (device offline) only the newest is delivered.
"""

from __future__ import annotations

from dataclasses import dataclass

from push_bridge.providers.base import PushRequest

COLLAPSE_KEY = "inbox"
# Apple stores at most one background push per app and throttles them; a wake-up older than this
# is worthless because the next one (or the user opening the app) supersedes it.
DEFAULT_EXPIRY_S = 3600


DEFAULT_APNS_TOPIC = "dev.pingpull.app"


@dataclass(frozen=True, slots=True)
class PayloadOptions:
    apns_topic: str = DEFAULT_APNS_TOPIC
    visible_alert: bool = False
    expiry_s: int = DEFAULT_EXPIRY_S
    alert_loc_key: str = "NEW_MESSAGE"


def apns_request(
    device_id: int, token: str, environment: str, seq: int, now_s: int, options: PayloadOptions
) -> PushRequest:
    headers = {
        "apns-topic": options.apns_topic,
        "apns-collapse-id": COLLAPSE_KEY,
        "apns-expiration": str(now_s + options.expiry_s),
    }
    body: dict[str, object]
    if options.visible_alert:
        headers |= {"apns-push-type": "alert", "apns-priority": "10"}
        body = {"aps": {"alert": {"loc-key": options.alert_loc_key}, "sound": "default"}, "pp": {"head": seq}}
    else:
        # Background pushes must use priority 5 (Apple rejects 10 with content-available only).
        headers |= {"apns-push-type": "background", "apns-priority": "5"}
        body = {"aps": {"content-available": 1}, "pp": {"head": seq}}
    return PushRequest(
        device_id=device_id,
        provider="apns",
        token=token,
        environment=environment,
        seq=seq,
        headers=headers,
        body=body,
    )


def fcm_request(device_id: int, token: str, seq: int, options: PayloadOptions) -> PushRequest:
    """An FCM HTTP v1 `message` (minus the token, which the provider sets)."""
    android: dict[str, object] = {
        "collapse_key": COLLAPSE_KEY,
        "ttl": f"{options.expiry_s}s",
        # Data messages at normal priority may be deferred by Doze; "high" is for user-visible
        # follow-ups, which is what a new message is. FCM demotes apps that abuse it.
        "priority": "high",
    }
    message: dict[str, object] = {"data": {"pp_head": str(seq)}, "android": android}
    if options.visible_alert:
        android["notification"] = {"title_loc_key": options.alert_loc_key, "tag": COLLAPSE_KEY}
    return PushRequest(
        device_id=device_id, provider="fcm", token=token, environment="production", seq=seq, body=message
    )


def log_request(device_id: int, provider: str, token: str, seq: int) -> PushRequest:
    return PushRequest(device_id=device_id, provider=provider, token=token, environment="", seq=seq)
