"""Process settings (``core.settings.Settings``) that check each other."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.settings import (
    CallbackSettings,
    HttpProviderSettings,
    Settings,
    WhatsAppApiSettings,
)


def settings(lease: float, http: float = 10.0, whatsapp: float = 10.0) -> Settings:
    return Settings(
        claim_lease_seconds=lease,
        http_provider=HttpProviderSettings(timeout_seconds=http, _env_file=None),
        whatsapp=WhatsAppApiSettings(timeout_seconds=whatsapp, _env_file=None),
        _env_file=None,
    )


def test_a_claim_lease_of_at_most_4_times_the_longest_provider_timeout_is_flagged():
    """A batch uses its claims for half the lease and a call may take twice its timeout (a
    read waiting when its deadline passes): a shorter lease lets the relay take a claim back
    while its call still runs."""
    assert settings(300).lease_shorter_than_calls() is None
    assert settings(120, whatsapp=30).lease_shorter_than_calls() == 30
    assert settings(81, http=20).lease_shorter_than_calls() is None
    assert settings(80, http=20).lease_shorter_than_calls() == 20


@pytest.mark.parametrize(
    ("model", "name", "most"),
    [
        (Settings, "retry_backoff_seconds", 86_400),
        (Settings, "retry_backoff_max_seconds", 86_400),
        (WhatsAppApiSettings, "pair_rate_retry_seconds", 86_400),
        (CallbackSettings, "backoff_base_seconds", 86_400),
        (CallbackSettings, "backoff_max_seconds", 86_400),
        (CallbackSettings, "retry_window_seconds", 30 * 86_400),
    ],
)
def test_a_wait_past_its_bound_is_refused_naming_the_setting(model, name, most):
    """A retry's time is now + a wait: one of 1e12 s is past the calendar, and the worker
    could not settle the error."""
    assert model(**{name: most}, _env_file=None)
    with pytest.raises(ValidationError) as caught:
        model(**{name: 1e12}, _env_file=None)
    assert caught.value.errors()[0]["loc"] == (name,)
