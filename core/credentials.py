"""Account keys and stream tokens: how they are made, found, compared and kept at rest.

* Made with ``secrets`` (256 bits of randomness), with a short prefix that tells what they are.
* Found by their SHA-256 digest, which is unique-indexed. A digest of 256 random bits cannot be
  reversed or brute-forced, so no key stretching is needed.
* Compared in constant time (``hmac.compare_digest``) after the indexed look-up.
* Stream tokens are also kept encrypted (Fernet: AES-128-CBC + HMAC-SHA256) so the console
  can show them; the Fernet key is derived from ``STREAMS_SECRET_KEY`` with HKDF.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

ACCOUNT_KEY_PREFIX = "sk_"
STREAM_TOKEN_PREFIX = "st_"
_RANDOM_BYTES = 32  # 256 bits


def new_account_key() -> str:
    return ACCOUNT_KEY_PREFIX + secrets.token_urlsafe(_RANDOM_BYTES)


def new_stream_token() -> str:
    return STREAM_TOKEN_PREFIX + secrets.token_urlsafe(_RANDOM_BYTES)


def new_webhook_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(_RANDOM_BYTES)


def digest(secret: str) -> str:
    """The look-up digest of a key or token (hex SHA-256)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def digests_match(expected: str | None, presented: str) -> bool:
    """Constant-time comparison of a stored digest with the digest of a presented secret."""
    if expected is None:
        return False
    return hmac.compare_digest(expected.encode("ascii"), digest(presented).encode("ascii"))


class SecretBox:
    """Encrypts small secrets (stream tokens, provider credentials) for storage.

    Raises ``ValueError`` from ``open`` when the ciphertext was not made with this key.
    """

    def __init__(self, secret_key: str) -> None:
        derived = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"streams/secret-box/v1"
        ).derive(secret_key.encode("utf-8"))
        self._fernet = Fernet(base64.urlsafe_b64encode(derived))

    def seal(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def open(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode("ascii")).decode("utf-8")
        except InvalidToken as exc:
            raise ValueError("ciphertext was not sealed with this secret key") from exc
