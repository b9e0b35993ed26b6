"""A kept history at rest: its event records and accepted envelope as one compressed blob.

A busy relay keeps up to ``Stats.max_messages`` histories (100,000 by default), and a
history of the plainest message (client, message-id, queued, sent, removed, and its
envelope) was 1.7 KB of JSON and 2.7 KB of RSS as separate ``bytes``: 270 MB of the
daemon's memory for the histories alone. These records are small and alike, so raw
deflate with a preset dictionary of the mail log's own shapes (``_SHAPES``) makes one
such history about 0.3 KB, in about 8 us; reading it back takes about 4 us.

:mod:`smtprelay.history` seals a history when it goes quiet -- the message is removed,
deferred (waiting for its retry) or scheduled for later -- and opens it again only to
add an event or to show it.
"""

from __future__ import annotations

import zlib

# What the records and the envelope of one message usually say, in the mail log's own
# JSON, so that deflate finds them (the last bytes are the cheapest to refer to: the
# commonest come last). Changing it makes earlier blobs unreadable: they live only in
# memory, so only within one process, never across a restart.
_SHAPES = (
    b'{"qid":"","sender":"","recipients":[{"address":"","state":"pending","params":{},'
    b'"attempts":0,"last_reply":null,"last_relay":null}],"client":{"ip":"127.0.0.1",'
    b'"port":,"helo":"","auth_user":null,"auth_method":null,"tls":"TLSv1.3 '
    b'TLS_AES_256_GCM_SHA384","protocol":"ESMTPSA"},"arrival":17,"size":,"mail_params":{},'
    b'"state":"active","next_attempt":17,"attempts":0,"message_id":null,"notice":null,'
    b'"delay_warned":false,"send_at":null,"submission":{"via":"smtp","token":null,'
    b'"tags":[],"metadata":{},"idempotency_key":null},"cancel_requested_by":null,'
    b'"version":1}\n'
    b'{"time":17,"service":"http","text":": client=unknown[127.0.0.1], api_token=, '
    b'via=http","client_ip":"127.0.0.1","api_token":"","submitted_via":"http",'
    b'"event":"client"}\n'
    b'{"time":17,"service":"smtpd","text":": client=unknown[127.0.0.1], sasl_method=PLAIN, '
    b'sasl_username=","client_ip":"127.0.0.1","sasl_method":"PLAIN","sasl_username":"",'
    b'"event":"client"}\n'
    b'{"time":17,"service":"cleanup","text":": message-id=<@>","message_id":"<@>",'
    b'"event":"message-id"}\n'
    b'{"time":17,"service":"qmgr","text":": from=<@>, size=, nrcpt=1 (queue active)",'
    b'"sender":"@","size":,"nrcpt":1,"event":"queued"}\n'
    b'{"time":17,"service":"smtp","text":": to=<@>, relay=, delay=0, delays=0/0/0/0, '
    b'dsn=5.1.1, status=bounced (550 5.1.1 ","recipient":"@","relay":"","delay":0,'
    b'"dsn":"5.1.1","code":550,"status":"bounced","reason":"","event":"delivery"}\n'
    b'{"time":17,"service":"smtp","text":": to=<@>, relay=none, delay=0, delays=0/0/0/0, '
    b"dsn=4.4.1, status=deferred (421 4.4.1 connect to [127.0.0.1]:25: Connection "
    b'refused)","recipient":"@","relay":"none","delay":0,"dsn":"4.4.1","code":421,'
    b'"status":"deferred","reason":"connect to ","event":"delivery"}\n'
    b'{"time":17,"service":"smtp","text":": to=<@>, relay=[127.0.0.1]:25, delay=0, '
    b'delays=0/0/0/0, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as )",'
    b'"recipient":"@","relay":"[127.0.0.1]:25","delay":0,"dsn":"2.0.0","code":250,'
    b'"status":"sent","reason":"Ok: queued as ","event":"delivery"}\n'
    b'{"time":17,"service":"qmgr","text":": removed","event":"removed"}\n'
)
# Raw deflate (no header or checksum: the blob never leaves the process) in an 8 KB
# window (a history is rarely longer; a longer one still compresses, less well), level
# 3 and a small hash table. Setting up the dictionary was most of the cost (25-40 us a
# seal), so it is set up once and each seal starts from a copy of that state (~8 us).
_PRIMED_PACKER = zlib.compressobj(3, zlib.DEFLATED, -13, 4, zdict=_SHAPES)
_PRIMED_UNPACKER = zlib.decompressobj(-13, zdict=_SHAPES)


def seal(envelope: bytes | None, records: tuple[bytes, ...]) -> bytes:
    """One blob of the envelope (empty: none) and the records, newline-separated
    (compact JSON has no raw newline)."""
    packer = _PRIMED_PACKER.copy()
    return packer.compress(b"\n".join((envelope or b"", *records))) + packer.flush()


def unseal(blob: bytes | memoryview) -> tuple[bytes | None, tuple[bytes, ...]]:
    """What :func:`seal` was given."""
    # One call: the blob is a whole stream, so decompress() gives all of it (a flush()
    # would be a second release of the GIL, which an event loop may wait to get back).
    envelope, *records = _PRIMED_UNPACKER.copy().decompress(blob).split(b"\n")
    return envelope or None, tuple(records)
