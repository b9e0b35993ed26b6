"""RSA signatures for dkimpy through OpenSSL (``cryptography``) instead of pure Python.

dkimpy computes the RSA private-key operation with Python integers: about 20 ms per
RSA-2048 signature on this machine, on the event loop, for every message signed --
against under 1 ms through OpenSSL. RSASSA-PKCS1-v1_5 signatures are deterministic, so
the bytes are the same either way (a unit test compares them); only the time differs.

dkimpy has no hook for it: :func:`install` replaces the name ``RSASSA_PKCS1_v1_5_sign``
in the ``dkim`` module, which ``DKIM.gen_header`` looks up at each call (pyproject.toml
pins dkimpy below 1.2; tests/unit/test_library_contract.py checks the name is used).
The replacement signs with an OpenSSL key made from dkimpy's parsed key numbers (kept
per modulus), and leaves anything it does not know to dkimpy's own function.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import dkim
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha1": hashes.SHA1,
}
_keys: dict[int, rsa.RSAPrivateKey] = {}  # modulus -> key; a handful of DKIM keys at most
_lock = threading.Lock()  # signing may run on an executor thread (large messages)
_original: Callable[[Any, dict[str, int]], bytes] | None = None


def _openssl_key(numbers: dict[str, int]) -> rsa.RSAPrivateKey:
    with _lock:
        key = _keys.get(numbers["modulus"])
        if key is None:
            key = rsa.RSAPrivateNumbers(
                p=numbers["prime1"],
                q=numbers["prime2"],
                d=numbers["privateExponent"],
                dmp1=numbers["exponent1"],
                dmq1=numbers["exponent2"],
                iqmp=numbers["coefficient"],
                public_numbers=rsa.RSAPublicNumbers(numbers["publicExponent"], numbers["modulus"]),
            ).private_key()
            if len(_keys) >= 64:  # keys rotated away over a long uptime
                _keys.clear()
            _keys[numbers["modulus"]] = key
        return key


def sign(digest: Any, numbers: dict[str, int]) -> bytes:
    """dkimpy's ``RSASSA_PKCS1_v1_5_sign(hash, private_key)``, through OpenSSL."""
    algorithm = _HASHES.get(str(getattr(digest, "name", "")).lower())
    if algorithm is None or _original is None:
        assert _original is not None
        return _original(digest, numbers)
    key = _openssl_key(numbers)
    return key.sign(digest.digest(), padding.PKCS1v15(), utils.Prehashed(algorithm()))


def install() -> None:
    """Make dkimpy's signing use :func:`sign` (once per process)."""
    global _original
    if _original is None:
        _original = dkim.RSASSA_PKCS1_v1_5_sign
        dkim.RSASSA_PKCS1_v1_5_sign = sign
