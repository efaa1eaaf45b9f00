"""The backend address policy, attacked with every spelling of a forbidden host we know.

A backend address that slips past the policy makes restcp an open relay into the cloud
metadata service, the node itself or a network the operator fenced off, so each case here
is an address an attacker would try, not a random one.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from restcp.core.policy import DEFAULT_DENY, AddressPolicy, parse_networks, spellings

DEFAULT = AddressPolicy()


def says(refusal: str | None, why: str) -> bool:
    """A refusal, and the reason an operator would need to see."""
    return refusal is not None and why in refusal


# The cloud metadata service (169.254.169.254 and AWS's fd00:ec2::254), as written by
# someone who knows that a naive string or single-family check can be walked around.
METADATA_SPELLINGS = [
    "169.254.169.254",
    "::ffff:169.254.169.254",  # IPv4-mapped: an AF_INET6 socket connects to the IPv4 host
    "::ffff:a9fe:a9fe",  # the same, in hex
    "0:0:0:0:0:ffff:a9fe:a9fe",  # the same, uncompressed
    "::FFFF:A9FE:A9FE",  # upper case
    "::a9fe:a9fe",  # IPv4-compatible (deprecated, still parsed)
    "::169.254.169.254",
    "64:ff9b::a9fe:a9fe",  # NAT64 well-known prefix: a translator connects to the IPv4 host
    "64:ff9b::169.254.169.254",
    "::ffff:0:a9fe:a9fe",  # IPv4-translated (SIIT)
    "fd00:ec2::254",
    "FD00:EC2:0:0:0:0:0:254",
    "fd00:0ec2::0254",  # leading zeros in IPv6 groups are legal
    "169.254.0.1",  # anywhere in the link-local /16, not only .169.254
    "::ffff:169.254.0.1",
]

OTHER_FORBIDDEN = [
    "0.0.0.0",  # connecting to 0.0.0.0 reaches the local host
    "0.1.2.3",
    "::ffff:0.0.0.0",
    "::",
    "224.0.0.1",
    "239.255.255.250",
    "::ffff:224.0.0.1",
    "ff02::1",
    "ff05::2",
    "255.255.255.255",
    "::ffff:255.255.255.255",
    "fe80::1",
    "fe80::1%eth0",  # a scope id does not change the network
    "febf:ffff::1",  # the top of fe80::/10
]

ORDINARY = ["127.0.0.1", "10.0.0.5", "192.168.1.10", "8.8.8.8", "::1", "2001:db8::1", "fd00::2"]


@pytest.mark.parametrize("ip", METADATA_SPELLINGS)
def test_metadata_service_is_refused_in_every_spelling(ip: str) -> None:
    refusal = DEFAULT.refusal(ip, 80)
    assert refusal is not None, f"{ip} passed the default policy"
    assert "denied network" in refusal
    assert ip in refusal  # the operator sees the address as it was sent


@pytest.mark.parametrize("ip", OTHER_FORBIDDEN)
def test_unspecified_multicast_broadcast_and_link_local_are_refused(ip: str) -> None:
    refusal = DEFAULT.refusal(ip, 80)
    assert refusal is not None, f"{ip} passed the default policy"
    assert "denied network" in refusal


@pytest.mark.parametrize("ip", ORDINARY)
def test_ordinary_addresses_pass(ip: str) -> None:
    assert DEFAULT.refusal(ip, 80) is None


@pytest.mark.parametrize("ip", ["not-an-ip", "169.254.169.254%1", "", "1.2.3", "0xa9fea9fe"])
def test_a_non_address_is_refused_not_guessed_at(ip: str) -> None:
    # No inet_aton leniency: "0xa9fea9fe" is 169.254.169.254 to inet_aton.
    refusal = DEFAULT.refusal(ip, 80)
    assert says(refusal, "not an IP address")


def test_default_deny_lists_every_documented_network() -> None:
    networks = {str(n) for n in parse_networks(DEFAULT_DENY)}
    assert networks >= {
        "169.254.0.0/16",
        "fd00:ec2::254/128",
        "fe80::/10",
        "0.0.0.0/8",
        "::/128",
        "224.0.0.0/4",
        "ff00::/8",
        "255.255.255.255/32",
    }


def test_spellings_of_a_plain_address_are_itself_only() -> None:
    for ip in ("10.0.0.1", "2001:db8::1", "::1", "::"):
        address = ipaddress.ip_address(ip)
        assert spellings(address) == [address]


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_every_embedded_form_of_a_denied_ipv4_is_denied(value: int) -> None:
    v4 = ipaddress.IPv4Address(value)
    denied = DEFAULT.refusal(str(v4), 80) is not None
    for prefix in (0xFFFF << 32, 0x64FF9B << 96, 0xFFFF << 48):
        embedded = str(ipaddress.IPv6Address(prefix | value))
        assert (DEFAULT.refusal(embedded, 80) is not None) >= denied, embedded


# -- allow lists -------------------------------------------------------------------------


def test_allow_restricts_backends_to_its_networks() -> None:
    policy = AddressPolicy(allow=parse_networks(["10.0.0.0/8", "2001:db8::/32"]))
    assert policy.refusal("10.1.2.3", 80) is None
    assert policy.refusal("2001:db8::5", 80) is None
    for outside in ("11.0.0.1", "127.0.0.1", "192.168.0.1", "2001:db9::1", "::1"):
        refusal = policy.refusal(outside, 80)
        assert says(refusal, "not in an allowed network"), outside


def test_allow_accepts_the_ipv4_mapped_form_of_an_allowed_address() -> None:
    # An AF_INET6 socket connects ::ffff:10.1.2.3 to 10.1.2.3 itself: same host, same answer.
    policy = AddressPolicy(allow=parse_networks(["10.0.0.0/8"]))
    assert policy.refusal("::ffff:10.1.2.3", 80) is None


@pytest.mark.parametrize("ip", ["::a01:203", "64:ff9b::a01:203", "::ffff:0:a01:203"])
def test_allow_is_not_satisfied_by_an_ipv6_address_that_merely_embeds_an_allowed_one(
    ip: str,
) -> None:
    # These are IPv6 destinations on the wire (a tunnel or a translator decides where they
    # go), so they are refused as aliases of a denied address but never let in as aliases of
    # an allowed one.
    policy = AddressPolicy(allow=parse_networks(["10.0.0.0/8"]))
    refusal = policy.refusal(ip, 80)
    assert says(refusal, "not in an allowed network")


def test_deny_wins_over_allow() -> None:
    policy = AddressPolicy(
        allow=parse_networks(["10.0.0.0/8", "169.254.0.0/16"]),
        deny=parse_networks([*DEFAULT_DENY, "10.9.0.0/16"]),
    )
    assert policy.refusal("10.1.0.1", 80) is None
    for ip in ("10.9.0.1", "::ffff:10.9.0.1", "169.254.169.254", "::a9fe:a9fe"):
        refusal = policy.refusal(ip, 80)
        assert says(refusal, "denied network"), ip


def test_an_allow_list_cannot_reopen_the_default_deny() -> None:
    policy = AddressPolicy(allow=parse_networks(["0.0.0.0/0", "::/0"]))
    assert policy.refusal("8.8.8.8", 80) is None
    for ip in ("169.254.169.254", "fd00:ec2::254", "0.0.0.0", "::", "ff02::1"):
        assert policy.refusal(ip, 80) is not None, ip


def test_extra_deny_networks_apply_to_every_spelling() -> None:
    policy = AddressPolicy(deny=parse_networks([*DEFAULT_DENY, "127.0.0.0/8"]))
    for ip in ("127.0.0.1", "127.255.0.1", "::ffff:127.0.0.1", "::ffff:7f00:1"):
        assert policy.refusal(ip, 80) is not None, ip
    assert policy.refusal("::1", 80) is None  # IPv6 loopback is another network


def test_a_deny_network_written_ipv4_mapped_covers_the_ipv4_address() -> None:
    # "--backend-deny ::ffff:10.0.0.0/104" names 10.0.0.0/8; the IPv4 spelling of an address
    # in it must not pass.
    policy = AddressPolicy(deny=parse_networks(["::ffff:10.0.0.0/104"]))
    for ip in ("10.1.2.3", "::ffff:10.1.2.3", "::a01:203"):
        assert policy.refusal(ip, 80) is not None, ip
    assert policy.refusal("11.0.0.1", 80) is None
    # All of IPv6 is not all of IPv4: "::/0" denies IPv6 backends only.
    v6_only = AddressPolicy(deny=parse_networks(["::/0"]))
    assert v6_only.refusal("10.1.2.3", 80) is None
    assert v6_only.refusal("2001:db8::1", 80) is not None


# -- the node's own addresses ------------------------------------------------------------

OWN = [("127.0.0.1", 8001)]


def test_the_nodes_own_address_is_refused_on_that_port_only() -> None:
    for ip in ("127.0.0.1", "::ffff:127.0.0.1", "::ffff:7f00:1"):
        refusal = DEFAULT.refusal(ip, 8001, OWN)
        assert says(refusal, "own API or listener"), ip
    assert DEFAULT.refusal("127.0.0.1", 8002, OWN) is None
    assert DEFAULT.refusal("127.0.0.2", 8001, OWN) is None
    assert DEFAULT.refusal("::1", 8001, OWN) is None


def test_an_own_listener_on_an_unspecified_address_owns_its_port_everywhere() -> None:
    for own_ip in ("0.0.0.0", "::"):
        own = [(own_ip, 10000)]
        for ip in ("127.0.0.1", "10.0.0.5", "::1", "2001:db8::1", "::ffff:10.0.0.5"):
            refusal = DEFAULT.refusal(ip, 10000, own)
            assert says(refusal, "own API or listener"), (own_ip, ip)
            assert DEFAULT.refusal(ip, 10001, own) is None, (own_ip, ip)


def test_an_own_address_given_ipv4_mapped_still_refuses_the_ipv4_spelling() -> None:
    own = [("::ffff:127.0.0.1", 8001)]
    assert DEFAULT.refusal("127.0.0.1", 8001, own) is not None
    assert DEFAULT.refusal("::ffff:127.0.0.1", 8001, own) is not None


def test_own_addresses_are_checked_even_when_allowed() -> None:
    policy = AddressPolicy(allow=parse_networks(["127.0.0.0/8"]))
    assert policy.refusal("127.0.0.1", 8001, OWN) is not None
    assert policy.refusal("127.0.0.1", 9000, OWN) is None


# -- parse_networks ----------------------------------------------------------------------


def test_parse_networks_accepts_cidrs_bare_addresses_and_host_bits() -> None:
    parsed = parse_networks(["10.0.0.0/8", " 192.168.1.7/24 ", "fd00::1", "::ffff:0:0/96"])
    assert [str(n) for n in parsed] == [
        "10.0.0.0/8",
        "192.168.1.0/24",
        "fd00::1/128",
        "::ffff:0:0/96",
    ]


@pytest.mark.parametrize(
    "text", ["10.0.0.0/33", "nope", "", "10.0.0.0/8/8", "::/129", "10.0.0.0/-1", "1.2.3.4.5"]
)
def test_parse_networks_names_the_bad_entry(text: str) -> None:
    with pytest.raises(ValueError, match="not an IP network") as caught:
        parse_networks(["10.0.0.0/8", text])
    message = str(caught.value)
    assert repr(text) in message
    assert "not an IP network (CIDR) or address" in message
    # The cause is dropped: one line for the operator, not a chained traceback.
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__
