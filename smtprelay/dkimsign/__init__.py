"""DKIM signing of outgoing mail (RFC 6376; Ed25519 per RFC 8463), with dkimpy.

``keys.py`` reads the ``[[dkim.keys]]`` PEM files into a :class:`Keyring` (a bad file is
a configuration error naming the key); ``signer.py`` signs one message with every key of
its ``From:`` domain (the pure :func:`sign`, and :class:`Signer`, which remembers the
signatures of messages it has signed); ``keygen.py`` is ``smtprelay dkim keygen``.
"""

from smtprelay.dkimsign.keys import DkimKey, DkimKeyError, Keyring, load_keyring
from smtprelay.dkimsign.signer import Signer, sign

__all__ = ["DkimKey", "DkimKeyError", "Keyring", "Signer", "load_keyring", "sign"]
