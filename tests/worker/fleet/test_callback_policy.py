"""Callback URLs and the addresses behind them: the allow-list matched part by part, and
the address rules on every resolved address, IPv6 forms of IPv4 included."""

from __future__ import annotations

import pytest

from contract.errors import CallbackNotAllowed
from worker.fleet.callback_policy import (
    UrlPattern,
    address_refusal,
    check_url,
    parse_networks,
    parse_patterns,
)

PUBLIC = "93.184.216.34"


def check(url: str, patterns: list[str], addresses: list[str] | None = None,
          private: list[str] | None = ()):
    return check_url(url, patterns=parse_patterns(patterns),
                     private_networks=None if private is None else parse_networks(private),
                     resolver=lambda host, port: addresses or [PUBLIC])


@pytest.mark.parametrize(("url", "pattern"), [
    ("https://hooks.example.com/x", "https://hooks.example.com/*"),
    ("https://a.b.example.com/hooks/1", "https://*.example.com/hooks/*"),
    ("https://hooks.example.com/a/b/c?token=1", "https://hooks.example.com/**"),
    ("https://hooks.example.com/anything/at/all", "https://hooks.example.com"),
    ("http://hooks.example.com:8080/x", "http://hooks.example.com:8080/*"),
    ("http://hooks.example.com:8080/x", "http://hooks.example.com:*/*"),
    ("https://hooks.example.com/x", "http*://hooks.example.com/*"),
    ("https://hooks.example.com/x", "*"),
])
def test_the_allow_list_admits_by_scheme_host_port_and_path(url, pattern):
    target = check(url, [pattern])
    assert target.address == PUBLIC and url.endswith(target.path)


@pytest.mark.parametrize(("url", "pattern"), [
    # The wildcard would span "/" if the whole URL were one fnmatch string.
    ("http://127.0.0.1:8080/x.example.com/steal", "http://*.example.com/*"),
    ("https://evil.org/x.example.com/", "https://*.example.com/*"),
    ("https://hooks.example.com/a/b", "https://hooks.example.com/*"),
    ("https://hooks.example.com:8443/x", "https://hooks.example.com/*"),
    ("http://hooks.example.com/x", "https://hooks.example.com/*"),
    ("https://hooks.example.com.evil.org/x", "https://hooks.example.com/*"),
    ("https://hooks.example.com@evil.org/x", "https://*/*"),
    ("https://user:pw@hooks.example.com/x", "https://hooks.example.com/*"),
    ("ftp://hooks.example.com/x", "*"),
])
def test_what_the_allow_list_refuses(url, pattern):
    with pytest.raises(CallbackNotAllowed):
        check(url, [pattern])


def test_no_allow_list_entry_means_no_callbacks():
    with pytest.raises(CallbackNotAllowed, match="IMG2IMG_ALLOWED_CALLBACKS"):
        check("https://hooks.example.com/x", [])


@pytest.mark.parametrize("address", [
    "169.254.169.254", "::ffff:169.254.169.254", "::ffff:a9fe:a9fe", "::169.254.169.254",
    "2002:a9fe:a9fe::1", "64:ff9b::a9fe:a9fe", "fd00:ec2::254", "169.254.170.2",
    "169.254.10.1", "fe80::1%eth0", "0.0.0.0", "::", "224.0.0.1", "2001:0:4136:e378::1",
])
def test_link_local_and_metadata_addresses_are_never_allowed(address):
    why = address_refusal(address, parse_networks(["0.0.0.0/0", "::/0"]))
    assert why is not None and "never" in why or "not a unicast" in why
    assert address_refusal(address, None) is not None, "not even for the operator's webhook"


@pytest.mark.parametrize("address", [
    "127.0.0.1", "::1", "::ffff:127.0.0.1", "::ffff:7f00:1", "10.1.2.3", "192.168.0.9",
    "172.16.5.5", "fd12:3456::1", "100.64.0.1", "::ffff:10.0.0.1",
])
def test_loopback_and_private_addresses_need_their_network_listed(address):
    why = address_refusal(address, [])
    assert why is not None and "IMG2IMG_CALLBACK_PRIVATE_NETWORKS" in why
    listed = parse_networks(["127.0.0.0/8", "::1/128", "10.0.0.0/8", "192.168.0.0/16",
                             "172.16.0.0/12", "fc00::/7", "100.64.0.0/10"])
    assert address_refusal(address, listed) is None
    assert address_refusal(address, None) is None  # the operator's webhook may be internal


def test_a_mapped_address_names_the_ipv4_it_carries():
    assert "(that is 169.254.169.254)" in address_refusal("::ffff:a9fe:a9fe", [])


def test_every_resolved_address_is_checked_and_the_first_is_pinned():
    with pytest.raises(CallbackNotAllowed, match="169.254.169.254"):
        check("https://rebind.example.com/x", ["https://*"], [PUBLIC, "169.254.169.254"])
    target = check("https://two.example.com/x", ["https://*"], [PUBLIC, "8.8.8.8"])
    assert (target.address, target.host, target.port) == (PUBLIC, "two.example.com", 443)


def test_a_star_pattern_still_refuses_loopback_without_the_opt_in():
    for url in ("http://127.0.0.1:9/", "http://[::1]:9/", "http://[::ffff:127.0.0.1]:9/"):
        with pytest.raises(CallbackNotAllowed, match="loopback"):
            check_url(url, patterns=parse_patterns(["*"]), private_networks=[])


def test_metadata_host_names_are_refused_before_resolving():
    with pytest.raises(CallbackNotAllowed, match="metadata host"):
        check("http://metadata.google.internal/computeMetadata/v1/", ["http://*"])


@pytest.mark.parametrize("bad", ["hooks.example.com", "ftp://x/*", "https://a@b/",
                                 "https://host:port/"])
def test_a_bad_pattern_is_an_error_naming_it(bad):
    with pytest.raises(ValueError, match="callback pattern"):
        UrlPattern.parse(bad)
