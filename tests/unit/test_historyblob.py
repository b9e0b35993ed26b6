"""smtprelay.historyblob: a quiet history's records and envelope in one compressed blob."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from smtprelay.historyblob import seal, unseal

# Compact JSON as history.py writes it: ensure_ascii (the default) escapes every
# control character, so no record holds a raw newline.
_values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text())
_records = st.lists(
    st.dictionaries(st.text(), _values, max_size=6).map(
        lambda d: json.dumps(d, separators=(",", ":")).encode()
    ),
    max_size=12,
).map(tuple)


@given(st.one_of(st.none(), _records.map(lambda r: b"{" + b",".join(r) + b"}")), _records)
def test_unseal_gives_back_what_was_sealed(
    envelope: bytes | None, records: tuple[bytes, ...]
) -> None:
    assert unseal(seal(envelope, records)) == (envelope, records)


def test_a_history_longer_than_the_window_comes_back_whole() -> None:
    records = tuple(
        json.dumps({"time": 1.5 + n, "text": f"QID: to=<u{n}@x.test>, status=deferred"}).encode()
        for n in range(400)
    )
    blob = seal(b'{"qid":"QID"}', records)
    assert unseal(blob) == (b'{"qid":"QID"}', records)


def test_a_plain_message_history_shrinks_to_under_a_third() -> None:
    # A plain message's records as the mail log writes them, and its envelope.
    qid = "1K205J9AJXSQ7"
    records = (
        f'{{"time":1796607982.259212,"service":"smtpd","text":"{qid}: client=unknown[192.0.2.5], '
        'sasl_method=PLAIN, sasl_username=app","client_ip":"192.0.2.5","sasl_method":"PLAIN",'
        '"sasl_username":"app","event":"client"}',
        f'{{"time":1796607982.2593288,"service":"cleanup","text":"{qid}: '
        'message-id=<a1@b.example>","message_id":"<a1@b.example>","event":"message-id"}',
        f'{{"time":1796607982.2594128,"service":"qmgr","text":"{qid}: from=<app@example.com>, '
        'size=2100, nrcpt=1 (queue active)","sender":"app@example.com","size":2100,"nrcpt":1,'
        '"event":"queued"}',
        f'{{"time":1796607982.259468,"service":"smtp","text":"{qid}: to=<user1@example.net>, '
        "relay=mx.example.net[198.51.100.7]:25, delay=0.5, delays=0.01/0/0.1/0.3, dsn=2.0.0, "
        'status=sent (250 2.0.0 Ok: queued as 4Zabc123)","recipient":"user1@example.net",'
        '"relay":"mx.example.net[198.51.100.7]:25","delay":0.5,"dsn":"2.0.0","code":250,'
        '"status":"sent","reason":"Ok: queued as 4Zabc123","event":"delivery"}',
        f'{{"time":1796607982.2595384,"service":"qmgr","text":"{qid}: removed","event":"removed"}}',
    )
    envelope = (
        f'{{"qid":"{qid}","sender":"app@example.com","recipients":[{{"address":"user1@example.net",'
        '"state":"pending","params":{},"attempts":0,"last_reply":null,"last_relay":null}],'
        '"client":{"ip":"192.0.2.5","port":40000,"helo":"client.example","auth_user":"app",'
        '"auth_method":"PLAIN","tls":"TLSv1.3 TLS_AES_256_GCM_SHA384","protocol":"ESMTPSA"},'
        '"arrival":1796607982.2591565,"size":2100,"mail_params":{},"state":"active",'
        '"next_attempt":1796607982.2591567,"attempts":0,"message_id":null,"notice":null,'
        '"delay_warned":false,"send_at":null,"submission":{"via":"smtp","token":null,"tags":[],'
        '"metadata":{},"idempotency_key":null},"cancel_requested_by":null,"version":1}'
    ).encode()
    encoded = tuple(r.encode() for r in records)
    plain = len(envelope) + sum(map(len, encoded))
    blob = seal(envelope, encoded)
    assert len(blob) * 3 < plain, (len(blob), plain)
    assert unseal(blob) == (envelope, encoded)
