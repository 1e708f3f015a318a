"""Accounts, linked devices, token refresh and push-token registration."""

from __future__ import annotations

from quart import Blueprint, Response
from quart_schema import security_scheme, validate_request, validate_response

from content_svc import store
from content_svc.app import context, no_content, principal
from content_svc.errors import NotFound, RegistrationClosed
from content_svc.openapi import answers_without_body
from content_svc.schemas import (
    AccountCreated,
    CreateAccount,
    DeviceLinked,
    LinkDevice,
    PushRegistration,
    TokenRefreshed,
)

blueprint = Blueprint("accounts", __name__)


@blueprint.post("/v1/accounts")
@security_scheme([])
@validate_request(CreateAccount)
@validate_response(AccountCreated, 201)
async def create_account(data: CreateAccount) -> tuple[AccountCreated, int]:
    """Register a user and its first device; open only where the server allows it."""
    ctx = context()
    if not ctx.open_registration:
        raise RegistrationClosed("ask an operator to run `pingpull account create`")
    user_id, device_id = await ctx.database.transaction(
        store.create_account, data.handle, data.device_name, ctx.clock_ms()
    )
    token = ctx.signer.mint(user_id, device_id)
    return AccountCreated(user_id=user_id, device_id=device_id, token=token), 201


@blueprint.post("/v1/devices")
@validate_request(LinkDevice)
@validate_response(DeviceLinked, 201)
async def link_device(data: LinkDevice) -> tuple[DeviceLinked, int]:
    """Link another device to the caller's account; it gets its own token."""
    ctx = context()
    who = await principal()
    device_id = await ctx.database.transaction(
        store.add_device, who.user_id, data.device_name, ctx.settings.max_devices_per_user, ctx.clock_ms()
    )
    return DeviceLinked(device_id=device_id, token=ctx.signer.mint(who.user_id, device_id)), 201


@blueprint.post("/v1/token")
@validate_response(TokenRefreshed, 200)
async def refresh_token() -> TokenRefreshed:
    """Exchange a valid token for a fresh one with a new expiry (and the current signing key)."""
    ctx = context()
    who = await principal()
    token = ctx.signer.mint(who.user_id, who.device_id)
    return TokenRefreshed(token=token, expires_at=ctx.verifier.verify(token).expires_at)


@blueprint.put("/v1/devices/<id:device_id>/push")
@answers_without_body(204)
@validate_request(PushRegistration)
async def register_push(device_id: int, data: PushRegistration) -> Response:
    """Register the device's APNs or FCM token; a device token acts only for its own device."""
    ctx = context()
    who = await principal()
    _require_own_device(who.device_id, device_id)
    await ctx.database.transaction(
        store.set_push_token,
        who.user_id,
        device_id,
        data.provider,
        data.token,
        data.environment,
        ctx.clock_ms(),
    )
    return no_content(204)


@blueprint.delete("/v1/devices/<id:device_id>/push")
@answers_without_body(204)
async def unregister_push(device_id: int) -> Response:
    ctx = context()
    who = await principal()
    _require_own_device(who.device_id, device_id)
    await ctx.database.transaction(store.clear_push_token, who.user_id, device_id)
    return no_content(204)


def _require_own_device(own: int, requested: int) -> None:
    if own != requested:
        raise NotFound("no such device")
