"""A WhatsApp stream's Cloud API set-up and templates (account key). The access token and the
app secret are write-only and sealed at rest; the set-up shows the token's last four
characters and any credential problem Meta reported while sending."""

from __future__ import annotations

import uuid
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.clock import as_utc
from core.runtime import Runtime
from core.whatsapp_templates import parameter_count
from dispatcher.auth import require_account, runtime_of
from dispatcher.errors import ApiError, not_found
from dispatcher.no_store import NO_STORE
from dispatcher.routes.streams import _forget, _owned, _refresh_status
from schemas.enums import StreamType
from schemas.errors import ErrorBody
from schemas.tables import Stream, WhatsAppConfig, WhatsAppTemplate
from schemas.whatsapp import (
    TemplateCreate,
    TemplateOut,
    WhatsAppProblem,
    WhatsAppSetup,
    WhatsAppSetupOut,
)

router = APIRouter(prefix="/api/v1/streams", tags=["whatsapp"])
log = structlog.get_logger(__name__)
_ERRORS = {code: {"model": ErrorBody} for code in (401, 404, 409, 422)}
Account = Annotated[uuid.UUID, Depends(require_account)]


def _whatsapp_stream(session: Session, account_id: uuid.UUID, stream_id: str) -> Stream:
    stream = _owned(session, account_id, stream_id)
    if stream.type != StreamType.whatsapp.value:
        raise ApiError(
            409, "not_a_whatsapp_stream", "Only WhatsApp streams have a WhatsApp set-up."
        )
    return stream


def _setup_view(
    runtime: Runtime, stream: Stream, config: WhatsAppConfig | None
) -> WhatsAppSetupOut:
    base = runtime.settings.public_url.rstrip("/")
    webhook_url = f"{base}/webhooks/{stream.id}/whatsapp"
    if config is None:
        return WhatsAppSetupOut(
            business_account_id=None,
            phone_number_id=None,
            access_token=None,
            app_secret_set=False,
            verify_token=None,
            state="incomplete",
            webhook_url=webhook_url,
            updated_at=None,
        )
    problem = (
        WhatsAppProblem(
            code=config.error_code,
            message=config.error_message or config.error_code,
            at=as_utc(config.error_at) if config.error_at else None,
        )
        if config.error_code
        else None
    )
    complete = bool(config.phone_number_id and config.access_token_sealed)
    return WhatsAppSetupOut(
        business_account_id=config.business_account_id,
        phone_number_id=config.phone_number_id,
        access_token=f"…{config.access_token_last4}" if config.access_token_last4 else None,
        app_secret_set=bool(config.app_secret_sealed),
        verify_token=runtime.secret_box.open(config.verify_token_sealed)
        if config.verify_token_sealed
        else None,
        state="error" if problem else ("ok" if complete else "incomplete"),
        error=problem,
        webhook_url=webhook_url,
        updated_at=as_utc(config.updated_at),
    )


@router.get(
    "/{stream_id}/whatsapp",
    response_model=WhatsAppSetupOut,
    responses=_ERRORS,
    dependencies=[NO_STORE],
)
def get_whatsapp(stream_id: str, request: Request, account_id: Account) -> WhatsAppSetupOut:
    runtime = runtime_of(request)
    with runtime.session_factory() as session:
        stream = _whatsapp_stream(session, account_id, stream_id)
        return _setup_view(runtime, stream, stream.whatsapp)


@router.put(
    "/{stream_id}/whatsapp",
    response_model=WhatsAppSetupOut,
    responses=_ERRORS,
    dependencies=[NO_STORE],
)
def put_whatsapp(
    stream_id: str, body: WhatsAppSetup, request: Request, account_id: Account
) -> WhatsAppSetupOut:
    """Save the set-up. Fields left out keep their value, ``null`` clears one. A new access
    token clears a reported credential problem. With a phone number id and a token the
    stream becomes ``ready``."""
    runtime = runtime_of(request)
    now = runtime.clock()
    box = runtime.secret_box
    given = body.model_fields_set
    with runtime.session_factory() as session:
        stream = _whatsapp_stream(session, account_id, stream_id)
        config = stream.whatsapp
        if config is None:
            config = WhatsAppConfig(stream_id=stream.id, updated_at=now)
            stream.whatsapp = config
        if "business_account_id" in given:
            config.business_account_id = body.business_account_id
        if "phone_number_id" in given:
            config.phone_number_id = body.phone_number_id
        if "access_token" in given:
            token = body.access_token
            config.access_token_sealed = box.seal(token) if token else None
            config.access_token_last4 = token[-4:] if token else None
            config.error_code = config.error_message = None
            config.error_at = None
        if "app_secret" in given:
            config.app_secret_sealed = box.seal(body.app_secret) if body.app_secret else None
        if "verify_token" in given:
            config.verify_token_sealed = box.seal(body.verify_token) if body.verify_token else None
        config.updated_at = now
        stream.updated_at = now
        _refresh_status(stream)
        session.commit()
        _forget(request, stream.id)
        log.info(
            "whatsapp_setup_saved",
            stream_id=stream_id,
            fields=sorted(given),
            status=stream.status,
        )
        return _setup_view(runtime, stream, config)


def _template_view(template: WhatsAppTemplate) -> TemplateOut:
    return TemplateOut(
        id=str(template.id),
        name=template.name,
        language=template.language,
        category=template.category,
        body=template.body,
        parameter_count=template.parameter_count,
        buttons=list(template.buttons),
        status=template.status,
        created_at=as_utc(template.created_at),
    )


@router.get("/{stream_id}/whatsapp/templates", response_model=list[TemplateOut], responses=_ERRORS)
def list_templates(stream_id: str, request: Request, account_id: Account) -> list[TemplateOut]:
    with runtime_of(request).session_factory() as session:
        stream = _whatsapp_stream(session, account_id, stream_id)
        templates = session.scalars(
            select(WhatsAppTemplate)
            .where(WhatsAppTemplate.stream_id == stream.id)
            .order_by(WhatsAppTemplate.name, WhatsAppTemplate.language)
        ).all()
        return [_template_view(t) for t in templates]


@router.post(
    "/{stream_id}/whatsapp/templates",
    status_code=201,
    response_model=TemplateOut,
    responses=_ERRORS,
)
def create_template(
    stream_id: str, body: TemplateCreate, request: Request, account_id: Account
) -> TemplateOut:
    """Register a template (as approved in Meta's Business Manager). Its ``{{n}}`` body
    parameters are counted so sends can be checked; ``name`` + ``language`` is unique."""
    runtime = runtime_of(request)
    try:
        count = parameter_count(body.body)
    except ValueError as exc:
        raise ApiError(422, "invalid_template", f"body: {exc}", field="body") from None
    for index, button in enumerate(body.buttons):
        if button.url is not None:
            try:
                dynamic = parameter_count(button.url)
            except ValueError as exc:
                raise ApiError(
                    422,
                    "invalid_template",
                    f"buttons[{index}].url: {exc}",
                    field=f"buttons[{index}].url",
                ) from None
            if dynamic > 1:
                raise ApiError(
                    422,
                    "invalid_template",
                    f"buttons[{index}].url may have one {{{{1}}}} parameter",
                    field=f"buttons[{index}].url",
                )
    with runtime.session_factory() as session:
        stream = _whatsapp_stream(session, account_id, stream_id)
        template = WhatsAppTemplate(
            id=uuid.uuid4(),
            stream_id=stream.id,
            name=body.name,
            language=body.language,
            category=body.category,
            body=body.body,
            parameter_count=count,
            buttons=[b.model_dump(mode="json", exclude_none=True) for b in body.buttons],
            status=body.status,
            created_at=runtime.clock(),
        )
        session.add(template)
        try:
            session.commit()
        except IntegrityError:
            raise ApiError(
                409,
                "template_exists",
                f"The stream already has template {body.name!r} in {body.language}.",
                field="name",
            ) from None
        return _template_view(template)


@router.delete("/{stream_id}/whatsapp/templates/{template_id}", status_code=204, responses=_ERRORS)
def delete_template(
    stream_id: str, template_id: str, request: Request, account_id: Account
) -> Response:
    """Unregister a template (Meta paused or deleted it, or it was registered wrong: register
    it again as it now is). Sends naming it are refused from then on; messages already
    accepted keep the content they were checked with. 404 for an id that is not a template
    of this stream."""
    try:
        key = uuid.UUID(template_id)
    except ValueError:
        raise not_found("template") from None
    with runtime_of(request).session_factory() as session:
        stream = _whatsapp_stream(session, account_id, stream_id)
        template = session.scalars(
            select(WhatsAppTemplate).where(
                WhatsAppTemplate.id == key, WhatsAppTemplate.stream_id == stream.id
            )
        ).first()
        if template is None:
            raise not_found("template")
        name, language = template.name, template.language
        session.delete(template)
        session.commit()
    log.info("whatsapp_template_deleted", stream_id=stream_id, name=name, language=language)
    return Response(status_code=204)
