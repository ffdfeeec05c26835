"""Issue 8, item 6 (invariant 8 over the whole run): no stream token, account key, webhook
secret, provider secret or OTP code appears in any log the test session produced.

A pytest plugin (listed in ``tests/conftest.py``), so it needs nothing from any test:

* what is scanned: the captured stdout, stderr and log records of every test phase (pytest
  keeps them on each report, passing or not; in-process apps log there) and, at the end,
  every ``*.log`` under the session's temporary directory (``tests/processes.py`` sends the
  output of ``streams serve``/``worker``/``relay`` subprocesses there);
* what is looked for: anything shaped like our secrets (``st_``/``sk_``/``whsec_`` and 43
  characters, whichever process made it), the provider secrets the tests configure, and
  every OTP code the session generated, where a code would leak ("code is 48213",
  ``"code": "48213"``) rather than as any run of digits, which timestamps are full of;
* what is not: the test client's own request lines (httpx logs the URLs it calls), and
  tests marked ``logs_secrets_on_purpose`` (the redaction tests feed made-up secrets to
  loggers; pytest's log capture holds those records before our redacting formatter);
* how it fails: a session fixture's teardown raises, listing where each leak was, so the
  run fails. Cheap: each report is scanned once with a few compiled patterns.

Running with ``-s`` (no capture) leaves only the subprocess logs to scan.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import core.otp_codes

SECRET_SHAPES = re.compile(r"\b(?:st|sk|whsec)_[A-Za-z0-9_\-]{40,}")
#: The in-process test client's own request log (httpx, client side): a test that sends a
#: secret in a URL on purpose (Meta's handshake carries hub.verify_token) is not our logging.
TEST_CLIENT_REQUEST = re.compile(r"^.*HTTP Request: [A-Z]+ http://testserver/.*$", re.MULTILINE)
CODE_IN_CONTEXT = re.compile(
    r"code[^A-Za-z0-9]{0,6}(?:is\s+)?([A-Za-z0-9]{4,10})(?![A-Za-z0-9])", re.IGNORECASE
)


class SecretLedger:
    """What must never be logged, and where it was seen."""

    def __init__(self) -> None:
        self.literals: set[str] = set()
        self.codes: set[str] = set()
        self.leaks: list[str] = []

    def scan(self, where: str, text: str) -> None:
        if not text:
            return
        for match in SECRET_SHAPES.finditer(text):
            self.leaks.append(f"{where}: a key or token {match.group(0)[:6]}...")
        for literal in self.literals:
            if literal in text:
                self.leaks.append(f"{where}: provider secret {literal[:4]}...")
        for match in CODE_IN_CONTEXT.finditer(text):
            if match.group(1) in self.codes:
                self.leaks.append(f"{where}: OTP code in {match.group(0)[:12]!r}...")


LEDGER = SecretLedger()


def pytest_configure(config: pytest.Config) -> None:
    from tests.fakes.http_sms import API_KEY
    from tests.two_way import ACCESS_TOKEN, APP_SECRET, VERIFY_TOKEN

    LEDGER.literals.update({API_KEY, ACCESS_TOKEN, APP_SECRET, VERIFY_TOKEN})
    generate = core.otp_codes.generate_code

    def recorded(*args, **kwargs):  # type: ignore[no-untyped-def]
        code = generate(*args, **kwargs)
        LEDGER.codes.add(code)
        return code

    # A recorder around the real generator (it still makes the code): the ledger learns
    # every code the session sends, in process.
    core.otp_codes.generate_code = recorded  # type: ignore[assignment]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "logs_secrets_on_purpose" in report.keywords:
        return  # the redaction tests: pytest's own log capture sees their records unredacted
    for title, text in report.sections:
        LEDGER.scan(f"{report.nodeid} ({title})", TEST_CLIENT_REQUEST.sub("", text))


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    for log in sorted(Path(tmp_path_factory.getbasetemp()).rglob("*.log")):
        LEDGER.scan(str(log), log.read_text(errors="replace"))
    if LEDGER.leaks:
        shown = "\n".join(sorted(set(LEDGER.leaks))[:50])
        raise AssertionError(f"secrets reached the logs ({len(LEDGER.leaks)}):\n{shown}")
