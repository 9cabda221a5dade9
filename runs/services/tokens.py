"""API tokens: created (shown once), authenticated (hashed lookup), revoked."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from django.db.models import Q
from django.utils import timezone

from ..models import ApiToken

TOKEN_PREFIX = "trt_"  # noqa: S105 - a public prefix, not a secret


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def api_token_create(*, user, name: str = "") -> tuple[ApiToken, str]:
    """Create a token; the clear text is returned once and never stored."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    record = ApiToken.objects.create(
        user=user, name=name[:100], prefix=token[:12], token_hash=token_hash(token)
    )
    return record, token


def api_token_authenticate(*, token: str):
    """The user of an active token, or None. Records when the token was last used."""
    if not token or len(token) > 200:
        return None
    record = (
        ApiToken.objects.select_related("user")
        .filter(token_hash=token_hash(token), revoked_at__isnull=True)
        .first()
    )
    if record is None or not record.user.is_active:
        return None
    _note_use(record)
    return record.user


# "Last used" is written at most once a minute per token, not on every request: the write
# is conditional in the database (of processes that see the same stale time, one writes),
# and each process remembers when it last wrote, so under load a token costs one UPDATE a
# minute per process at most instead of one per request.
LAST_USED_EVERY = timedelta(minutes=1)
_last_noted: dict[str, datetime] = {}


def _note_use(record: ApiToken) -> None:
    now = timezone.now()
    stale = now - LAST_USED_EVERY
    noted = _last_noted.get(record.token_hash)
    if (noted is not None and noted > stale) or (
        record.last_used_at is not None and record.last_used_at > stale
    ):
        return
    _last_noted[record.token_hash] = now
    ApiToken.objects.filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lte=stale), pk=record.pk
    ).update(last_used_at=now)


def api_token_revoke(*, token: ApiToken) -> None:
    ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
