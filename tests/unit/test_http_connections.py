"""smtprelay.web.connections: the count of open HTTP connections per address and in all."""

from __future__ import annotations

from smtprelay.web.connections import ConnectionCap


def test_per_address_and_total_bounds() -> None:
    cap = ConnectionCap(per_address=2, total=3)
    a, b, c, d, e = (object() for _ in range(5))
    assert cap.admit(a, "192.0.2.9") and cap.admit(b, "192.0.2.9")
    assert not cap.admit(c, "192.0.2.9")  # a third from the same address
    assert cap.admit(c, "192.0.2.10")
    assert not cap.admit(d, "192.0.2.11")  # three open in all
    assert (cap.count, cap.refused) == (3, 2)
    cap.release(a)
    cap.release(d)  # never admitted: nothing to release
    assert cap.admit(d, "192.0.2.9")
    cap.release(b)
    cap.release(c)
    cap.release(d)
    assert cap.count == 0 and not cap.open
    assert cap.admit(e, "192.0.2.9")


def test_ipv6_addresses_count_per_64() -> None:
    cap = ConnectionCap(per_address=1, total=10)
    assert cap.admit(object(), "2001:db8:1:2::1")
    assert not cap.admit(object(), "2001:db8:1:2::ffff")
    assert cap.admit(object(), "2001:db8:1:3::1")
