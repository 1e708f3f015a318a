"""FCM HTTP v1 through pyfcm, in worker threads.

pyfcm is synchronous (requests), so each send runs in `trio.to_thread.run_sync` under a
`trio.CapacityLimiter`. Each worker thread has its own pyfcm client, hence its own requests session
and keep-alive connection (thread-local: sessions are not shared across threads).

What pyfcm 2.1 does that a push bridge must not, and what this module does instead:

* Access tokens. pyfcm calls ``credentials.refresh()`` (always a token request) whenever a
  client's 30-minute header cache lapses, per thread. Here one `AccessTokens` holds one google-auth
  credentials object for every thread and refreshes it only once it is no longer valid (google-auth
  counts a token as stale a few minutes before ``expires_in``), under a lock: one token request
  per hour, whatever the thread count. A 401 drops that token so the next send fetches a new one.
* Retries. pyfcm's ``send_request`` sleeps ``Retry-After`` seconds in the calling thread and calls
  itself again, without bound, and its session retries POSTs answered 502/503 up to 10 times with
  exponential backoff (urllib3 ``Retry``). Either would hold a worker thread for minutes and hide
  the answer. Here the worker owns retries (its backoff, honouring ``retry_after_s``): our client
  makes exactly one POST and mounts an adapter with ``max_retries=0``.
* Answers. pyfcm raises ``FCMNotRegisteredError`` for any 404 (a wrong project URL too) and
  ``FCMServerError`` for 429 and every 5xx alike, dropping FCM's ``errorCode`` and ``Retry-After``.
  Outcomes are read from the response itself: ``UNREGISTERED`` means the token is dead; an
  ``INVALID_ARGUMENT`` about the registration token and ``SENDER_ID_MISMATCH`` mean it is invalid
  for *our* project, which is also what every token answers when the configured project or service
  account is wrong, so they are TOKEN_INVALID and the worker removes the token only once FCM is
  known to deliver for this configuration (docs/decisions/0002-*.md); 429, 5xx, a timeout or a
  connection failure are retried; everything else (a bad payload, ``PERMISSION_DENIED``, a bare
  404 without FCM's ``UNREGISTERED`` detail, which a wrong endpoint also answers) is a permanent
  refusal that is not the token's fault.

The OAuth endpoint is the service account's ``token_uri`` and the send endpoint is
``endpoint_base`` (pyfcm's ``FCM_END_POINT_BASE``), so tests and proxies point both elsewhere.
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import google.auth.exceptions
import google.auth.transport.requests
import requests
import trio
from google.oauth2 import service_account
from pyfcm import FCMNotification
from pyfcm.errors import FCMError
from requests.adapters import HTTPAdapter

from push_bridge.errors import ProviderConfigError
from push_bridge.providers.base import Outcome, PushOutcome, PushProvider, PushRequest, parse_retry_after

__all__ = ["FCM_END_POINT_BASE", "FCM_SCOPE", "AccessTokens", "FcmConfig", "FcmProvider", "outcome_for"]

log = logging.getLogger("pingpull.push.fcm")

FCM_END_POINT_BASE: Final = "https://fcm.googleapis.com/v1/projects"
FCM_SCOPE: Final = "https://www.googleapis.com/auth/firebase.messaging"
_FCM_ERROR: Final = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_BAD_REQUEST: Final = "type.googleapis.com/google.rpc.BadRequest"

# FCM v1 message fields -> pyfcm notify() arguments.
_FIELDS: Final = {
    "data": "data_payload",
    "android": "android_config",
    "apns": "apns_config",
    "webpush": "webpush_config",
    "fcm_options": "fcm_options",
}
_NOTIFICATION_FIELDS: Final = {
    "title": "notification_title",
    "body": "notification_body",
    "image": "notification_image",
}


@dataclass(frozen=True, slots=True)
class FcmConfig:
    """A service account (parsed JSON or a file), the project (default: the account's), limits."""

    service_account: Mapping[str, Any] | None = field(default=None, repr=False)
    service_account_file: str = ""
    project_id: str = ""
    endpoint_base: str = FCM_END_POINT_BASE
    max_threads: int = 8
    request_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if (self.service_account is None) == (not self.service_account_file):
            raise ProviderConfigError("FCM needs exactly one of service_account and service_account_file")
        if not 1 <= self.max_threads <= 256:
            raise ProviderConfigError("FCM max_threads within 1..256")
        if not 0 < self.request_timeout_s <= 300:
            raise ProviderConfigError("FCM request_timeout_s within (0, 300]")
        if not self.endpoint_base.startswith(("https://", "http://")):
            raise ProviderConfigError("FCM endpoint_base must be an http(s) URL")

    def load_service_account(self) -> dict[str, Any]:
        if self.service_account is not None:
            return dict(self.service_account)
        try:
            info = json.loads(Path(self.service_account_file).read_text())
        except (OSError, ValueError) as exc:
            raise ProviderConfigError(f"cannot read the FCM service account file: {exc}") from exc
        if not isinstance(info, dict):
            raise ProviderConfigError("the FCM service account file is not a JSON object")
        return info


# --------------------------------------------------------------------------------------------------
# outcomes (pure)


def _error_fields(body: Any) -> tuple[str, str, str, list[str]]:
    """(FcmError errorCode, google.rpc status, message, BadRequest violated fields) of an error body."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return "", "", "", []
    code, violations = "", []
    for detail in error.get("details") or []:
        if not isinstance(detail, dict):
            continue
        if detail.get("@type") == _FCM_ERROR:
            code = str(detail.get("errorCode", ""))
        elif detail.get("@type") == _BAD_REQUEST:
            violations += [
                str(v.get("field", "")) for v in detail.get("fieldViolations") or [] if isinstance(v, dict)
            ]
    return code, str(error.get("status", "")), str(error.get("message", "")), violations


def outcome_for(status: int, body: Any, retry_after: str | None = None) -> PushOutcome:
    """Translate one FCM v1 answer (HTTP status, JSON body, Retry-After)."""
    if status == 200:
        return PushOutcome(Outcome.DELIVERED, status=status)
    code, rpc_status, message, violations = _error_fields(body)
    reason = code or rpc_status or f"HTTP {status}"
    if code == "UNREGISTERED":
        return PushOutcome(Outcome.TOKEN_DEAD, reason=reason, status=status)
    if status == 400 and "INVALID_ARGUMENT" in (code, rpc_status):
        # INVALID_ARGUMENT is also a bad payload; only one about the token is about the token.
        about_token = "message.token" in violations or "registration token" in message.lower()
        return PushOutcome(
            Outcome.TOKEN_INVALID if about_token else Outcome.REJECTED, reason=reason, status=status
        )
    if code == "SENDER_ID_MISMATCH":
        # A token of another sender: dead for us, or our project id / service account is wrong.
        return PushOutcome(Outcome.TOKEN_INVALID, reason=reason, status=status)
    if status == 429 or status >= 500:
        return PushOutcome(
            Outcome.RETRY, reason=reason, status=status, retry_after_s=parse_retry_after(retry_after)
        )
    if status == 401 and code != "THIRD_PARTY_AUTH_ERROR":
        return PushOutcome(Outcome.RETRY, reason=reason, status=status)  # our access token: fetch a new one
    return PushOutcome(Outcome.REJECTED, reason=reason, status=status)


def notify_arguments(message: Mapping[str, Any]) -> dict[str, Any]:
    """An FCM v1 message (without the token) as pyfcm ``notify()`` arguments; ValueError if it cannot."""
    arguments: dict[str, Any] = {}
    for key, value in message.items():
        if key in _FIELDS:
            arguments[_FIELDS[key]] = value
        elif key == "notification" and isinstance(value, Mapping):
            for name, text in value.items():
                if name not in _NOTIFICATION_FIELDS:
                    raise ValueError(f"pyfcm cannot send notification.{name}")
                arguments[_NOTIFICATION_FIELDS[name]] = text
        else:
            raise ValueError(f"pyfcm cannot send the message field {key!r}")
    return arguments


# --------------------------------------------------------------------------------------------------
# worker-thread side


class _TimedRequest(google.auth.transport.requests.Request):
    """google-auth's transport with a timeout (its default is 120 s, under our token lock)."""

    def __init__(self, session: requests.Session, timeout_s: float) -> None:
        super().__init__(session)
        self._timeout_s = timeout_s

    def __call__(
        self,
        url: Any,
        method: Any = "GET",
        body: Any = None,
        headers: Any = None,
        timeout: Any = None,
        **kwargs: Any,
    ) -> Any:
        timeout = self._timeout_s if timeout is None else timeout
        return super().__call__(  # type: ignore[no-untyped-call]
            url, method=method, body=body, headers=headers, timeout=timeout, **kwargs
        )


class AccessTokens:
    """One OAuth access token for every worker thread, fetched again only when no longer valid."""

    def __init__(
        self, credentials: service_account.Credentials, *, timeout_s: float, verify: bool | str
    ) -> None:
        self._credentials = credentials
        self._lock = threading.Lock()
        self._session = requests.Session()
        self._session.verify = verify
        self._request = _TimedRequest(self._session, timeout_s)
        self.fetched = 0

    def header(self) -> str:
        with self._lock:
            if not self._credentials.valid:
                self._credentials.refresh(self._request)  # type: ignore[no-untyped-call]
                self.fetched += 1
            return f"Bearer {self._credentials.token}"

    def invalidate(self, header: str) -> None:
        """Forget the token ``header`` carried, unless another thread already replaced it."""
        with self._lock:
            if header == f"Bearer {self._credentials.token}":
                self._credentials.token = None

    def close(self) -> None:
        self._session.close()


class _SessionSlot:
    """The requests session a client's thread opened; closed when the client goes (thread exit)."""

    __slots__ = ("session",)

    def __init__(self) -> None:
        self.session: requests.Session | None = None

    def close(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            session.close()


class _Client(FCMNotification):  # type: ignore[misc]
    """pyfcm's client for one worker thread: one POST per send, no retries, the shared token."""

    def __init__(
        self,
        credentials: service_account.Credentials,
        endpoint: str,
        tokens: AccessTokens,
        verify: bool | str,
    ) -> None:
        super().__init__(
            credentials=credentials, adapter=HTTPAdapter(max_retries=0, pool_connections=1, pool_maxsize=1)
        )
        self._endpoint = endpoint
        self._tokens = tokens
        self._verify = verify
        self.slot = _SessionSlot()
        self.response: requests.Response | None = None
        self.authorization = ""

    @property
    def fcm_end_point(self) -> str:
        return self._endpoint

    def request_headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", "Authorization": self._tokens.header()}

    def push(self, token: str, arguments: dict[str, Any], timeout_s: float) -> requests.Response | None:
        """One send through pyfcm's notify(); the response, whatever pyfcm made of it (None if unsent)."""
        self.response = None
        # pyfcm raises from the status code alone; the caller reads the response instead.
        with suppress(FCMError):
            self.notify(fcm_token=token, timeout=timeout_s, **arguments)
        return self._last_response()

    def _last_response(self) -> requests.Response | None:
        return self.response

    def send_request(self, payload: bytes | None = None, timeout: float | None = None) -> requests.Response:
        session = self.slot.session = self.requests_session  # pyfcm's, kept in its thread-local
        self.authorization = self._tokens.header()
        self.response = session.post(
            self.fcm_end_point,
            data=payload,
            timeout=timeout,
            headers={"Authorization": self.authorization},
            verify=self._verify,
        )
        return self.response


# --------------------------------------------------------------------------------------------------


class FcmProvider(PushProvider):
    """FCM HTTP v1. ``verify`` is requests' TLS verification (True, or a CA bundle path)."""

    name = "fcm"

    def __init__(self, config: FcmConfig, *, verify: bool | str = True) -> None:
        info = config.load_service_account()
        try:
            credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                info, scopes=[FCM_SCOPE]
            )
        except (ValueError, KeyError) as exc:
            raise ProviderConfigError(f"unusable FCM service account: {exc}") from exc
        project_id = config.project_id or str(info.get("project_id") or "")
        if not project_id:
            raise ProviderConfigError("FCM needs a project id (config or the service account's project_id)")
        self.project_id = project_id
        self.endpoint = f"{config.endpoint_base.rstrip('/')}/{project_id}/messages:send"
        self._credentials = credentials
        self._config = config
        self._verify = verify
        self._tokens = AccessTokens(credentials, timeout_s=config.request_timeout_s, verify=verify)
        self._limiter = trio.CapacityLimiter(config.max_threads)
        self._local = threading.local()
        # Weak: a client lives as long as its worker thread (trio retires idle threads after a while);
        # its finalizer then closes its session, so connections do not pile up with thread churn.
        self._clients: weakref.WeakSet[_Client] = weakref.WeakSet()
        self._clients_lock = threading.Lock()
        self._closed = False

    @property
    def tokens_fetched(self) -> int:
        """OAuth access tokens fetched so far (one per token lifetime, whatever the thread count)."""
        return self._tokens.fetched

    async def send(self, request: PushRequest) -> PushOutcome:
        if self._closed:
            return PushOutcome(Outcome.RETRY, reason="ProviderClosed")
        try:
            arguments = notify_arguments(request.body)
        except ValueError as exc:
            log.warning("FCM message not sendable: %s", exc)
            return PushOutcome(Outcome.REJECTED, reason="InvalidRequest")
        return await trio.to_thread.run_sync(
            self._send_blocking, request.token, arguments, limiter=self._limiter
        )

    async def aclose(self) -> None:
        self._closed = True
        # Wait for sends in flight (each bounded by the request timeout) before closing their sessions:
        # holding every token of the limiter means no worker thread is using one.
        borrowers = [object() for _ in range(int(self._limiter.total_tokens))]
        for borrower in borrowers:
            await self._limiter.acquire_on_behalf_of(borrower)
        with self._clients_lock:
            clients = list(self._clients)
        for client in clients:
            client.slot.close()
        self._tokens.close()

    # worker thread
    def _client(self) -> _Client:
        client: _Client | None = getattr(self._local, "client", None)
        if client is None:
            client = _Client(self._credentials, self.endpoint, self._tokens, self._verify)
            weakref.finalize(client, client.slot.close)
            self._local.client = client
            with self._clients_lock:
                self._clients.add(client)
        return client

    # worker thread
    def _send_blocking(self, token: str, arguments: dict[str, Any]) -> PushOutcome:
        client = self._client()
        try:
            response = client.push(token, arguments, self._config.request_timeout_s)
        except requests.Timeout:
            return PushOutcome(Outcome.RETRY, reason="Timeout")
        except requests.ConnectionError:
            return PushOutcome(Outcome.RETRY, reason="ConnectionError")
        except requests.RequestException as exc:
            return PushOutcome(Outcome.RETRY, reason=type(exc).__name__)
        except google.auth.exceptions.TransportError:
            return PushOutcome(Outcome.RETRY, reason="OAuthUnreachable")
        except google.auth.exceptions.RefreshError as exc:
            log.warning("FCM access token refused: %s", exc)
            retryable = bool(getattr(exc, "retryable", False))
            return PushOutcome(Outcome.RETRY if retryable else Outcome.REJECTED, reason="OAuthRefused")
        except Exception as exc:
            log.exception("FCM send failed")
            return PushOutcome(Outcome.RETRY, reason=type(exc).__name__)
        if response is None:
            return PushOutcome(Outcome.REJECTED, reason="InvalidRequest")
        try:
            body = response.json()
        except ValueError:
            body = None
        outcome = outcome_for(response.status_code, body, response.headers.get("Retry-After"))
        if response.status_code == 401:
            self._tokens.invalidate(client.authorization)
        return outcome
