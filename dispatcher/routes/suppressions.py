"""The account's suppression list (account key): numbers that sent STOP. Marketing to them
is rejected (``opted_out``); deleting one lets marketing reach it again."""

from __future__ import annotations

import uuid
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy import func, select

from core.clock import as_utc
from core.phones import InvalidPhoneNumber, to_e164
from core.suppressions import unsuppress
from dispatcher.auth import require_account, runtime_of
from dispatcher.errors import ApiError, not_found
from schemas.errors import ErrorBody
from schemas.tables import Suppression
from schemas.two_way import SuppressionOut, SuppressionPage

router = APIRouter(prefix="/api/v1/suppressions", tags=["suppressions"])
log = structlog.get_logger(__name__)
_ERRORS = {code: {"model": ErrorBody} for code in (401, 404, 422)}
Account = Annotated[uuid.UUID, Depends(require_account)]


def _phone(value: str, field: str) -> str:
    try:
        return to_e164(value)
    except InvalidPhoneNumber as exc:
        raise ApiError(422, "invalid_phone", f"{field} {exc}", field=field) from None


@router.get("", response_model=SuppressionPage, responses=_ERRORS)
def list_suppressions(
    request: Request,
    account_id: Account,
    phone: Annotated[str | None, Query(max_length=32)] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    per_page: Annotated[int, Query(ge=1, le=100)] = 20,
) -> SuppressionPage:
    """Newest first; ``phone`` narrows to one number."""
    conditions = [Suppression.account_id == account_id]
    if phone:
        conditions.append(Suppression.phone == _phone(phone, "phone"))
    with runtime_of(request).session_factory() as session:
        total = session.scalar(select(func.count()).select_from(Suppression).where(*conditions))
        rows = session.scalars(
            select(Suppression)
            .where(*conditions)
            .order_by(Suppression.created_at.desc(), Suppression.phone)
            .offset((page - 1) * per_page)
            .limit(per_page)
        ).all()
    return SuppressionPage(
        items=[
            SuppressionOut(
                phone=r.phone,
                keyword=r.keyword,
                stream_id=str(r.stream_id) if r.stream_id else None,
                created_at=as_utc(r.created_at),
            )
            for r in rows
        ],
        total=total or 0,
        page=page,
        per_page=per_page,
    )


@router.delete("/{phone}", status_code=204, responses=_ERRORS)
def delete_suppression(phone: str, request: Request, account_id: Account) -> Response:
    """Take a number off the list (``+`` may be sent as ``%2B``)."""
    number = _phone(phone, "phone")
    with runtime_of(request).session_factory() as session:
        removed = unsuppress(session, account_id, number)
        session.commit()
    if not removed:
        raise not_found("suppression")
    log.info("suppression_deleted", account_id=str(account_id))
    return Response(status_code=204)
