"""Property-based fuzzing of a real `pingpull serve` against its own description, /v1/openapi.json.

The test seeds a server (three users, a linked device, a direct conversation, a group, one that
alice is not in, a few messages), then runs the schemathesis CLI against the description:

* coverage phase: deterministic boundary values (limit=10000, ids of 2**63-1, empty strings...) and
  schema-violating variants of every parameter and body, plus methods the description does not list;
* fuzzing phase: Hypothesis-generated valid and invalid requests, EXAMPLES_PER_OPERATION of each
  per operation, with a fixed seed;
* stateful phase: sequences following the links schemathesis infers (create, then read or send).

It must exit 0: every response passes CHECKS (no 5xx, documented status -> documented media type
and schema, invalid input never a 2xx, every 4xx a problem document, bad tokens never let through).

This module is also the run's hooks module (SCHEMATHESIS_HOOKS, imported by the CLI, which then
calls `_register_hooks`): requests act as one of the seeded identities, mostly real users, and use
ids that exist half of the time, so that the fuzzing reaches the handlers rather than 401 and 404.

Why the CLI: `schemathesis.pytest.from_fixture` fails under pytest 9 (it sets
`request.node._nodeid`), and `as_strategy()` in a hand-written Hypothesis test has no coverage phase,
which is what finds boundary bugs: a 500 injected for `limit > 5000` went unnoticed without it.
On failure the assertion shows schemathesis' report (a curl line per failure; X-Fuzz-As names the
identity, the token itself is filtered) and the server's log without its request lines.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.process import pingpull_serve

ROOT = Path(__file__).resolve().parents[2]
WORLD_ENV = "PINGPULL_TEST_FUZZ_WORLD"  # the seeded ids and tokens, as a JSON file, for the hooks
IDENTITY_HEADER = "X-Fuzz-As"  # which identity a request acts as; sent, so failures show it
EXAMPLES_PER_OPERATION = 30
SEED = 20240611
REQUEST_TIMEOUT_S = 10

# The checks, and why these:
# - not_a_server_error: the design promises "bad input is a 4xx, never a 500".
# - response_schema_conformance, content_type_conformance: a response whose status is documented
#   must have the documented media type and match the documented JSON schema. Both skip statuses
#   the description does not list, deliberately: it lists success responses only, while errors are
#   application/problem+json documents (400, 401, 404, 409, 415, 422, 429) that quart-schema does not
#   describe. status_code_conformance would fail on each of them, so it is left out; `problem_details`
#   checks those bodies instead.
# - negative_data_rejection: a request that violates the description must not get a 2xx.
# - unsupported_method, allow_header_conformance: a method not in the description is a 405 with an
#   Allow header; OPTIONS advertises the documented methods.
# - use_after_free: what a DELETE removed is gone.
# - missing_required_header: without its bearer token a request is refused (401).
# - problem_details, bad_tokens_rejected: defined in `_register_hooks`.
# Left out: positive_data_acceptance (valid requests may fail on state: 404, 409, 422 ...; and the
# description is looser than the server: bodies and Idempotency-Key are required but not marked so),
# ignored_auth (its invalid credentials are replaced by our identities; bad_tokens_rejected does that
# job), ensure_resource_availability (it follows POST /v1/devices to /v1/devices/{id}/push with the
# old device's token, and a device token acts only for its own device: a 404 by design).
CHECKS = (
    "not_a_server_error",
    "response_schema_conformance",
    "content_type_conformance",
    "negative_data_rejection",
    "unsupported_method",
    "allow_header_conformance",
    "use_after_free",
    "missing_required_header",
    "problem_details",
    "bad_tokens_rejected",
)

# Weighted: most requests act as a real user (alice most: her conversations are the seeded ones),
# some carry no token, a forged one or one that is not a JWT at all.
IDENTITIES = ("alice", "alice", "alice", "alice-tablet", "bob", "carol", "anonymous", "forged", "garbage")
BAD_IDENTITIES = frozenset({"anonymous", "forged", "garbage"})


@dataclass
class Identity:
    token: str
    user_id: int
    device_id: int


@dataclass
class World:
    """The seeded server: whose ids and tokens the requests use."""

    url: str
    log_path: Path
    people: dict[str, Identity] = field(default_factory=dict)
    conversation_ids: list[int] = field(default_factory=list)
    message_ids: list[int] = field(default_factory=list)

    def headers(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.people[who].token}"}

    def authorization(self, who: str) -> str | None:
        """The Authorization header sent as `who`; None sends none."""
        if who == "anonymous":
            return None
        if who == "forged":  # alice's token with one character of its signature changed
            token = self.people["alice"].token
            i = len(token) - 10  # not the last one: its low bits are padding, ignored when decoding
            return f"Bearer {token[:i]}{'B' if token[i] == 'A' else 'A'}{token[i + 1 :]}"
        if who == "garbage":
            return "Bearer not-a-jwt"
        return f"Bearer {self.people[who].token}"

    def for_hooks(self) -> dict[str, Any]:
        return {
            "ids": {
                "conversation_id": self.conversation_ids,
                "user_id": sorted({p.user_id for p in self.people.values()}),
                "device_id": sorted({p.device_id for p in self.people.values()}),
            },
            "authorization": {who: self.authorization(who) for who in IDENTITIES},
        }

    def server_log(self) -> str:
        """The server's log without its request lines: errors and their tracebacks stand out."""
        lines = [line for line in self.log_path.read_text().splitlines() if " request " not in line]
        return "\n".join(lines)[-10_000:]


def _seed(url: str, log_path: Path) -> World:
    world = World(url=url, log_path=log_path)
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as client:

        def call(path: str, who: str | None, body: dict[str, Any], **headers: str) -> Any:
            auth = world.headers(who) if who else {}
            response = client.post(path, json=body, headers={**auth, **headers})
            assert response.status_code == 201, f"POST {path}: {response.status_code} {response.text}"
            return response.json()

        for handle in ("alice", "bob", "carol"):
            created = call("/v1/accounts", None, {"handle": handle})
            world.people[handle] = Identity(created["token"], created["user_id"], created["device_id"])
        linked = call("/v1/devices", "alice", {"device_name": "tablet"})
        alice, bob, carol = (world.people[h] for h in ("alice", "bob", "carol"))
        world.people["alice-tablet"] = Identity(linked["token"], alice.user_id, linked["device_id"])

        direct = call("/v1/conversations", "alice", {"members": [bob.user_id]})["id"]
        group = call("/v1/conversations", "alice", {"members": [bob.user_id, carol.user_id], "title": "fuzz"})
        hidden = call("/v1/conversations", "bob", {"members": [carol.user_id]})["id"]  # alice is not in it
        world.conversation_ids += [direct, group["id"], hidden]
        for who, conversation_id in (("alice", direct), ("bob", group["id"]), ("carol", hidden)):
            path = f"/v1/conversations/{conversation_id}/messages"
            sent = call(path, who, {"body": f"hello from {who}"}, **{"Idempotency-Key": f"seed-{who}"})
            world.message_ids.append(sent["id"])
    return world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with pingpull_serve(tmp_path_factory.mktemp("fuzz") / "data") as server:
        yield _seed(server.content_url, server.log_path)


@pytest.mark.e2e
def test_content_api_matches_its_openapi_description(world: World, tmp_path: Path) -> None:
    pytest.importorskip("schemathesis", minversion="4")  # the options below are schemathesis 4's
    world_file = tmp_path / "world.json"
    world_file.write_text(json.dumps(world.for_hooks()))
    # An explicit config, so that no schemathesis.toml nearby changes the run, and no crash cache:
    # each run starts from nothing (and writes nothing outside tmp_path, the working directory).
    config_file = tmp_path / "schemathesis.toml"
    config_file.write_text("[cache]\nenabled = false\n")
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        f"--config-file={config_file}",
        "run",
        f"{world.url}/v1/openapi.json",
        f"--checks={','.join(CHECKS)}",
        "--phases=coverage,fuzzing,stateful",  # "examples" too would only be skipped: there are none
        "--mode=all",  # positive and negative data
        f"--max-examples={EXAMPLES_PER_OPERATION}",
        f"--seed={SEED}",
        "--workers=1",  # one request at a time, in the same order every run
        "--generation-database=none",
        # Our hooks set Authorization; schemathesis' own generated bearer values would just be 401s.
        "--generation-with-security-parameters=false",
        # One request per connection: on a reused one, an answer sent before the request body was
        # read hangs the connection (test_early_answer_leaves_a_usable_or_closed_connection below);
        # the run would then find timeouts instead of bugs.
        "--header=Connection: close",
        f"--request-timeout={REQUEST_TIMEOUT_S}",
        "--continue-on-failure",
        "--no-color",
        "--output-truncate=false",
    ]
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {
        **os.environ,
        "PYTHONPATH": python_path,
        "SCHEMATHESIS_HOOKS": __name__,
        WORLD_ENV: str(world_file),
    }
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{output}\n--- server log ---\n{world.server_log()}"
    # ... and it really ran: every documented operation, with hundreds of requests.
    selected, tested, generated = (
        re.search(pattern, output)
        for pattern in (r"Selected: +\d+/(\d+)", r"Tested: +(\d+)", r"(\d+) generated")
    )
    assert selected and tested and generated, output
    operations = int(selected.group(1))
    assert operations >= 14 and int(tested.group(1)) == operations, output
    assert int(generated.group(1)) >= operations * EXAMPLES_PER_OPERATION, output


def _register_hooks(world: dict[str, Any]) -> None:
    """Runs in the schemathesis process (see the module docstring); `world` is `World.for_hooks()`."""
    import schemathesis
    from hypothesis import strategies as st

    real_ids: dict[str, list[int]] = world["ids"]
    authorization: dict[str, str | None] = world["authorization"]

    # These hooks never touch a value that violates the description: negative cases must stay
    # negative, or negative_data_rejection would rightly complain about the 2xx they get.
    def valid_id(value: Any) -> bool:
        return type(value) is int and 1 <= value < 2**63

    @schemathesis.hook
    def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> Any:
        """Half of the time, ids that exist (generated ones almost never do)."""
        params = path_parameters or {}
        names = [name for name, value in params.items() if name in real_ids and valid_id(value)]
        if not names:
            return st.just(path_parameters)
        real = st.fixed_dictionaries({name: st.sampled_from(real_ids[name]) for name in names})
        return st.one_of(st.just(path_parameters), real.map(lambda ids: {**params, **ids}))

    @schemathesis.hook
    def flatmap_body(context: Any, body: Any) -> Any:
        """New conversations with users that exist, half of the time."""
        operation = context.operation
        if operation.method.upper() != "POST" or operation.path != "/v1/conversations":
            return st.just(body)
        members = body.get("members") if isinstance(body, dict) else None
        if not isinstance(members, list) or not members or not all(map(valid_id, members)):
            return st.just(body)
        real = st.lists(st.sampled_from(real_ids["user_id"]), min_size=1, max_size=3)
        return st.one_of(st.just(body), real.map(lambda m: {**body, "members": m}))

    @schemathesis.hook
    def flatmap_headers(context: Any, headers: dict[str, Any] | None) -> Any:
        """The description calls Idempotency-Key optional, the server requires it: add one, half of the
        time, or most valid sends would end in a 400 before the send path."""
        operation = context.operation
        if not operation.path.endswith("/messages") or operation.method.upper() != "POST":
            return st.just(headers)
        if any(name.lower() == "idempotency-key" for name in headers or {}):
            return st.just(headers)
        key = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=32)
        return st.one_of(st.just(headers), key.map(lambda k: {**(headers or {}), "Idempotency-Key": k}))

    @schemathesis.hook
    def flatmap_case(context: Any, case: Any) -> Any:
        """Generated requests act as one of IDENTITIES."""

        def act_as(who: str) -> Any:
            case.headers = {**(case.headers or {}), IDENTITY_HEADER: who}
            return case

        return st.sampled_from(IDENTITIES).map(act_as)

    @schemathesis.hook
    def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
        """Authorization from the identity; alice for requests no identity was drawn for (coverage,
        stateful phases). POST /v1/accounts is open, it needs none but gets one all the same."""
        headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        who = headers.setdefault(IDENTITY_HEADER, "alice")
        value = authorization[who]
        if value is not None:
            headers["Authorization"] = value
        case.headers = headers

    @schemathesis.check
    def problem_details(ctx: Any, response: Any, case: Any) -> bool | None:
        """Every 4xx is an RFC 9457 problem with the design's stable fields."""
        if not 400 <= response.status_code < 500:
            return None
        content_type = (response.headers.get("content-type") or [""])[0]
        assert content_type.startswith("application/problem+json"), (
            f"{response.status_code} answered with {content_type or 'no content type'}, "
            "not application/problem+json"
        )
        problem = response.json()
        assert isinstance(problem, dict), problem
        assert problem.get("status") == response.status_code, problem
        assert str(problem.get("type", "")).startswith("https://pingpull.dev/problems/"), problem
        assert isinstance(problem.get("title"), str), problem
        assert isinstance(problem.get("detail"), str), problem
        return None

    @schemathesis.check
    def bad_tokens_rejected(ctx: Any, response: Any, case: Any) -> bool | None:
        """No token, a forged one or garbage never gets a success, except where no token is needed."""
        who = (response.request.headers.get(IDENTITY_HEADER) or "alice").strip()
        # Registration, and tus discovery (OPTIONS is a CORS preflight: it never carries credentials).
        open_route = case.operation.path == "/v1/accounts" or (
            case.operation.path == "/v1/uploads" and case.method.upper() == "OPTIONS"
        )
        if who in BAD_IDENTITIES and not open_route:
            assert response.status_code >= 400, f"acting as {who!r} got {response.status_code}"
        return None


if WORLD_ENV in os.environ:  # imported by the schemathesis CLI as its hooks module
    _register_hooks(json.loads(Path(os.environ[WORLD_ENV]).read_text()))


@pytest.mark.e2e
def test_server_survives_the_fuzzing(world: World) -> None:
    """Runs after the fuzzing, on the same server: still live, ready and serving real users."""
    with httpx.Client(base_url=world.url, timeout=REQUEST_TIMEOUT_S) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        assert client.get("/v1/conversations", headers=world.headers("alice")).status_code == 200
        # A newcomer (the fuzzing may have spent alice's send budget) writes to bob, who pulls it.
        created = client.post("/v1/accounts", json={"handle": "newcomer"})
        assert created.status_code == 201, created.text
        newcomer = {"Authorization": f"Bearer {created.json()['token']}"}
        bob = world.people["bob"]
        conversation = client.post("/v1/conversations", json={"members": [bob.user_id]}, headers=newcomer)
        assert conversation.status_code == 201, conversation.text
        sent = client.post(
            f"/v1/conversations/{conversation.json()['id']}/messages",
            json={"body": "still here"},
            headers={**newcomer, "Idempotency-Key": "after-the-fuzzing"},
        )
        assert sent.status_code == 201, sent.text
        head = client.get("/v1/inbox", headers=world.headers("bob")).json()["head"]
        last = client.get("/v1/inbox", params={"after": head - 1}, headers=world.headers("bob"))
        assert last.status_code == 200, last.text
        assert [item["message"]["body"] for item in last.json()["items"]] == ["still here"]


# --- bugs the fuzzing found, pinned down -------------------------------------------------------


@pytest.mark.e2e
def test_early_answer_leaves_a_usable_or_closed_connection(tmp_path: Path) -> None:
    """An answer sent before the request body arrived (a 405, a 401, a 415) must not hang the connection.

    Any client may cause it: `requests` (so schemathesis) and http.client write headers and body
    separately. Either the next request is answered, or the server closes the connection.
    """
    # Its own server: a hung connection holds up graceful shutdown for the whole shutdown timeout.
    env = {"PINGPULL_CONTENT_SHUTDOWN_TIMEOUT_S": "1"}
    with pingpull_serve(tmp_path / "data", env=env) as server:
        host, port = server.content_url.removeprefix("http://").rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=2)
        try:
            connection.putrequest("PUT", "/v1/inbox/ack")  # no PUT there: a 405 that reads no body
            connection.putheader("Content-Type", "application/json")
            connection.putheader("Content-Length", "10")
            connection.endheaders()
            first = connection.getresponse()  # the answer, before a byte of the body was sent
            first.read()
            assert first.status == 405
            time.sleep(0.2)  # let the server finish with that exchange
            try:
                connection.send(b'{"seq": 0}')  # the body, late
                connection.request("GET", "/healthz")
                second = connection.getresponse()
            except (ConnectionError, http.client.RemoteDisconnected):
                return  # closed by the server: clients reconnect
            assert second.status == 200
        finally:
            connection.close()


@pytest.mark.e2e
def test_an_id_that_cannot_exist_is_not_found_for_every_documented_method(world: World) -> None:
    """Found by the fuzzing (fixed since): a path id out of 1..2**63-1 made the id converter refuse the
    value, and werkzeug answered 405 with an Allow header that left out the very method that exists."""
    group = world.conversation_ids[1]
    push = {"provider": "fcm", "token": "device-push-token"}
    wrong = []
    headers = {**world.headers("alice"), "Idempotency-Key": "k", "Connection": "close"}
    with httpx.Client(base_url=world.url, timeout=REQUEST_TIMEOUT_S, headers=headers) as client:
        for method, path, body in (
            ("GET", "/v1/conversations/0", None),
            ("GET", f"/v1/conversations/{2**63}/messages", None),
            ("POST", "/v1/conversations/0/messages", {"body": "x"}),
            ("POST", "/v1/conversations/0/members/1", None),
            ("DELETE", f"/v1/conversations/{group}/members/{2**63}", None),
            ("PUT", "/v1/devices/0/push", push),
            ("DELETE", "/v1/devices/0/push", None),
        ):
            response = client.request(method, path, json=body)
            if response.status_code != 404:
                wrong.append(
                    f"{method} {path}: {response.status_code}, Allow: {response.headers.get('allow')}"
                )
    assert not wrong, "\n".join(wrong)
