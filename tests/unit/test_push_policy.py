"""The push policy and payloads: pure functions, every rule pinned down."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from push_bridge import payloads
from push_bridge.health import ProviderHealth
from push_bridge.policy import Followup, JobView, Next, RetryPolicy, Verdict, after_send, decide
from push_bridge.providers import apns, fcm
from push_bridge.providers.base import Outcome, PushOutcome

REPUSH_MS = 600_000


def job(**overrides: object) -> JobView:
    values: dict[str, object] = {
        "device_id": 1,
        "seq": 5,
        "attempts": 0,
        "has_token": True,
        "acked_seq": 0,
        "last_push_at_ms": None,
        "last_push_seq": None,
    }
    values.update(overrides)
    return JobView(**values)  # type: ignore[arg-type]


def test_no_token_drops() -> None:
    assert decide(job(has_token=False), 0, REPUSH_MS).verdict is Verdict.DROP_NO_TOKEN


@pytest.mark.parametrize("acked", [5, 6])
def test_acked_job_drops(acked: int) -> None:
    assert decide(job(acked_seq=acked), 0, REPUSH_MS).verdict is Verdict.DROP_ACKED


def test_first_push_goes() -> None:
    assert decide(job(), 0, REPUSH_MS).verdict is Verdict.PUSH


def test_pushed_and_not_acked_since_defers_until_repush_time() -> None:
    pushed = job(last_push_at_ms=1_000, last_push_seq=3, acked_seq=2)
    decision = decide(pushed, 1_000 + REPUSH_MS - 1, REPUSH_MS)
    assert decision.verdict is Verdict.DEFER
    assert decision.not_before_ms == 1_000 + REPUSH_MS
    assert decide(pushed, 1_000 + REPUSH_MS, REPUSH_MS).verdict is Verdict.PUSH


def test_acked_since_the_last_push_may_push_again_at_once() -> None:
    assert (
        decide(job(last_push_at_ms=1_000, last_push_seq=3, acked_seq=3), 1_001, REPUSH_MS).verdict
        is Verdict.PUSH
    )


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (Outcome.DELIVERED, Next.DONE),
        (Outcome.REJECTED, Next.DONE),
        (Outcome.TOKEN_DEAD, Next.REMOVE_TOKEN),
        (Outcome.RETRY, Next.RETRY),
    ],
)
def test_outcomes(outcome: Outcome, expected: Next) -> None:
    assert after_send(PushOutcome(outcome), 1, 0, RetryPolicy(), random.Random(1)).next is expected


# --- invalid tokens: dead only when the provider configuration is proven (decision 0002) -------------


def test_invalid_token_is_removed_only_when_the_configuration_is_proven() -> None:
    invalid = PushOutcome(Outcome.TOKEN_INVALID, reason="BadDeviceToken", status=400)
    proven = after_send(invalid, 1, 0, RetryPolicy(), random.Random(1), config_proven=True)
    assert proven == Followup(Next.REMOVE_TOKEN)
    unproven = after_send(invalid, 1, 10_000, RetryPolicy(initial_s=1), random.Random(1))
    assert unproven.next is Next.SUSPECT_CONFIG  # the token is kept and the job tried again
    assert unproven.not_before_ms is not None and 10_000 <= unproven.not_before_ms <= 11_000


def test_unregistered_is_dead_whatever_the_proof() -> None:
    dead = PushOutcome(Outcome.TOKEN_DEAD, reason="Unregistered", status=410)
    for proven in (False, True):
        followup = after_send(dead, 1, 0, RetryPolicy(), random.Random(1), config_proven=proven)
        assert followup.next is Next.REMOVE_TOKEN


def test_unproven_invalid_token_gives_up_keeping_the_token() -> None:
    invalid = PushOutcome(Outcome.TOKEN_INVALID, reason="DeviceTokenNotForTopic", status=400)
    followup = after_send(invalid, 3, 0, RetryPolicy(max_attempts=3), random.Random(1))
    assert followup.next is Next.GIVE_UP


@pytest.mark.parametrize(
    ("status", "reason", "expected"),
    [
        (410, "Unregistered", Outcome.TOKEN_DEAD),
        (410, "ExpiredToken", Outcome.TOKEN_DEAD),
        (400, "BadDeviceToken", Outcome.TOKEN_INVALID),
        (400, "DeviceTokenNotForTopic", Outcome.TOKEN_INVALID),
        (400, "MissingDeviceToken", Outcome.TOKEN_INVALID),
        (400, "BadTopic", Outcome.REJECTED),
        (403, "InvalidProviderToken", Outcome.REJECTED),
        (429, "TooManyRequests", Outcome.RETRY),
    ],
)
def test_apns_answers_classify_tokens(status: int, reason: str, expected: Outcome) -> None:
    assert apns.outcome_for(status, reason).outcome is expected


def _fcm_error(status: int, rpc: str, code: str = "", message: str = "") -> dict[str, object]:
    details = [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}]
    return {"error": {"code": status, "status": rpc, "message": message, "details": details if code else []}}


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (404, _fcm_error(404, "NOT_FOUND", "UNREGISTERED"), Outcome.TOKEN_DEAD),
        (
            400,
            _fcm_error(
                400,
                "INVALID_ARGUMENT",
                "INVALID_ARGUMENT",
                "The registration token is not a valid FCM registration token",
            ),
            Outcome.TOKEN_INVALID,
        ),
        (403, _fcm_error(403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH"), Outcome.TOKEN_INVALID),
        (404, _fcm_error(404, "NOT_FOUND", message="Requested entity was not found."), Outcome.REJECTED),
        (
            400,
            _fcm_error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "Invalid value at 'message.android.ttl'"),
            Outcome.REJECTED,
        ),
    ],
    ids=["unregistered", "invalid-token", "sender-id-mismatch", "bare-404", "bad-payload"],
)
def test_fcm_answers_classify_tokens(status: int, body: dict[str, object], expected: Outcome) -> None:
    assert fcm.outcome_for(status, body).outcome is expected


def test_a_delivery_proves_its_scope_for_the_window_only() -> None:
    health = ProviderHealth(proof_window_ms=60_000)
    production, sandbox = ("apns", "production"), ("apns", "sandbox")
    assert not health.proven(production, 0)
    health.delivered(production, 1_000)
    assert health.proven(production, 61_000)
    assert not health.proven(production, 61_001)  # stale: proves nothing about the config now
    assert not health.proven(sandbox, 1_000)  # another host and token space
    assert not health.proven(("fcm", "production"), 1_000)


def test_a_suspected_configuration_alerts_once_and_clears_on_a_delivery() -> None:
    health = ProviderHealth(proof_window_ms=60_000)
    scope = ("apns", "production")
    assert health.suspect(scope) is True
    assert health.suspect(scope) is False  # one alert per episode
    assert health.suspected(scope)
    assert health.delivered(scope, 5) is True  # recovered
    assert not health.suspected(scope)
    assert health.delivered(scope, 6) is False
    assert health.suspect(scope) is True  # a new episode alerts again


def test_retry_gives_up_after_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert after_send(PushOutcome(Outcome.RETRY), 3, 0, policy, random.Random(1)).next is Next.GIVE_UP


@given(
    attempts=st.integers(min_value=1, max_value=40),
    retry_after=st.none() | st.floats(min_value=0, max_value=3600),
)
def test_retry_delay_is_capped_jittered_and_never_before_retry_after(
    attempts: int, retry_after: float | None
) -> None:
    policy = RetryPolicy(initial_s=1, cap_s=300, max_attempts=1000)
    followup = after_send(
        PushOutcome(Outcome.RETRY, retry_after_s=retry_after),
        attempts,
        10_000,
        policy,
        random.Random(attempts),
    )
    assert followup.not_before_ms is not None
    delay_s = (followup.not_before_ms - 10_000) / 1000
    assert 0 <= delay_s <= max(300, retry_after or 0) + 0.001
    if retry_after is not None:
        assert delay_s >= retry_after - 0.001


def test_background_apns_payload_is_content_free() -> None:
    request = payloads.apns_request(
        7, "tok", "sandbox", 42, 1_000, payloads.PayloadOptions(apns_topic="app.x")
    )
    assert request.headers == {
        "apns-topic": "app.x",
        "apns-collapse-id": "inbox",
        "apns-expiration": str(1_000 + payloads.DEFAULT_EXPIRY_S),
        "apns-push-type": "background",
        "apns-priority": "5",
    }
    assert request.body == {"aps": {"content-available": 1}, "pp": {"head": 42}}
    assert request.environment == "sandbox"


def test_visible_apns_alert_carries_no_text() -> None:
    request = payloads.apns_request(
        7, "tok", "production", 42, 0, payloads.PayloadOptions(visible_alert=True)
    )
    assert request.headers["apns-push-type"] == "alert" and request.headers["apns-priority"] == "10"
    assert request.body["aps"] == {"alert": {"loc-key": "NEW_MESSAGE"}, "sound": "default"}


def test_fcm_message_is_a_collapsible_data_message() -> None:
    request = payloads.fcm_request(7, "tok", 42, payloads.PayloadOptions())
    assert request.body == {
        "data": {"pp_head": "42"},
        "android": {"collapse_key": "inbox", "ttl": f"{payloads.DEFAULT_EXPIRY_S}s", "priority": "high"},
    }


def test_an_acked_device_is_not_pushed_again_within_the_minimum_interval() -> None:
    acked = job(last_push_at_ms=1_000, last_push_seq=3, acked_seq=3)
    deferred = decide(acked, 1_000 + 14_999, REPUSH_MS, min_interval_ms=15_000)
    assert deferred.verdict is Verdict.DEFER
    assert deferred.not_before_ms == 16_000
    assert decide(acked, 16_000, REPUSH_MS, min_interval_ms=15_000).verdict is Verdict.PUSH
    assert decide(job(), 0, REPUSH_MS, min_interval_ms=15_000).verdict is Verdict.PUSH  # never pushed


def test_the_longer_of_repush_and_minimum_interval_wins_when_not_acked() -> None:
    pushed = job(last_push_at_ms=1_000, last_push_seq=3, acked_seq=2)
    decision = decide(pushed, 2_000, REPUSH_MS, min_interval_ms=15_000)
    assert decision.not_before_ms == 1_000 + max(REPUSH_MS, 15_000)
