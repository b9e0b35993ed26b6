from __future__ import annotations

import smtplib
import ssl

from tests.integration.daemon import LOOPBACK, Daemon


def test_starttls_auth_and_queue(daemon: Daemon) -> None:
    context = ssl.create_default_context(cafile=str(daemon.ca_file))
    with smtplib.SMTP(LOOPBACK, daemon.port, local_hostname="client.test") as client:
        client.starttls(context=context)
        client.login("app1", "secret-pw")
        client.sendmail("app@example.com", ["bob@example.net"], b"Subject: hi\r\n\r\nbody\r\n")
        code, _ = client.noop()
    assert code == 250
    (qid,) = daemon.queued_ids()
    assert daemon.message(qid).endswith(b"Subject: hi\r\n\r\nbody\r\n")
    envelope = daemon.envelope(qid)
    assert envelope["client"]["auth_user"] == "app1"
    assert envelope["recipients"][0]["address"] == "bob@example.net"
