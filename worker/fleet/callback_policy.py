"""Which URLs the worker may POST events to, and which addresses it may connect to.

A job's ``callback_url`` is written by whoever can send a job, so it is checked twice:
- **the allow-list** (``IMG2IMG_ALLOWED_CALLBACKS``), matched part by part: scheme,
  host, port and path each against the pattern's own part. A ``*`` never crosses a
  ``/`` (``**`` in a path does), a pattern without a port admits only the scheme's
  default port, and a URL carrying credentials (``user@host``) is never admitted;
- **the address rules**, on every address the host resolves to (IPv4-mapped, -compatible,
  6to4 and NAT64 IPv6 forms are checked as the IPv4 address they carry): link-local
  and cloud metadata addresses, unspecified, multicast and reserved ones are never
  allowed; loopback, private (RFC 1918, unique local) and shared (100.64.0.0/10) ones
  only inside a network listed in ``IMG2IMG_CALLBACK_PRIVATE_NETWORKS``.

The fleet's own webhook (``IMG2IMG_WEBHOOK_URL``) is the operator's: no allow-list, and
private addresses are fine, but never a link-local or metadata one.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from contract.errors import CallbackNotAllowed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]

DEFAULT_PORTS = {"http": 80, "https": 443}
METADATA_HOSTS = {"metadata.google.internal", "metadata", "metadata.azure.com",
                  "instance-data", "instance-data.ec2.internal"}
# Instance and task metadata services: never an event target, whatever is configured.
METADATA_ADDRESSES = {ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "169.254.170.23", "fd00:ec2::254", "fd00:ec2::23",
    "100.100.100.200", "192.0.0.192")}
SHARED_NETWORK = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT
NAT64_NETWORK = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (the address that was checked) and what to ask."""

    scheme: str
    host: str  # as in the URL: the Host header and the TLS server name
    port: int
    address: str  # the resolved address the connection must go to
    path: str  # path and query, as sent in the request line


@dataclass(frozen=True)
class UrlPattern:
    scheme: str
    host: str
    port: str | None  # None: the scheme's default port
    path: re.Pattern[str] | None  # None: any path

    @classmethod
    def parse(cls, text: str) -> UrlPattern:
        text = text.strip()
        if text == "*":
            return cls(scheme="http*", host="*", port="*", path=None)
        scheme, sep, rest = text.partition("://")
        if scheme not in ("http", "https", "http*") or not sep:
            raise ValueError(f"callback pattern {text!r} is not scheme://host[:port][/path] "
                             "with scheme http, https or http*")
        netloc, slash, path = rest.partition("/")
        host, port = netloc, ""
        if match := re.fullmatch(r"(.*):(\d+|\*)", netloc):
            host, port = match.group(1), match.group(2)
        if not host or "@" in host or (":" in host and not host.startswith("[")):
            raise ValueError(f"callback pattern {text!r}: the host part {host!r} is not a "
                             "host name, an address or a pattern of one")
        path = slash + path
        return cls(scheme=scheme, host=host.lower().strip("[]"), port=port or None,
                   path=_path_regex(path) if path not in ("", "/**") else None)

    def admits(self, scheme: str, host: str, port: int, path: str) -> bool:
        if not _glob(self.scheme, scheme) or not _glob(self.host, host):
            return False
        if self.port is None:
            if port != DEFAULT_PORTS[scheme]:
                return False
        elif self.port != "*" and int(self.port) != port:
            return False
        return self.path is None or bool(self.path.fullmatch(path or "/"))


def _glob(pattern: str, value: str) -> bool:
    """fnmatch for one URL part: ``*`` is any run of characters, ``?`` one character."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value) is not None


def _path_regex(path: str) -> re.Pattern[str]:
    """``**`` spans segments, ``*`` and ``?`` stay inside one."""
    out = []
    for token in re.split(r"(\*\*|\*|\?)", path):
        out.append({"**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token)))
    return re.compile("".join(out))


def parse_patterns(values: Sequence[str]) -> list[UrlPattern]:
    return [UrlPattern.parse(value) for value in values]


def parse_networks(values: Sequence[str]) -> list[IPNetwork]:
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not a network like 10.0.0.0/8 or fd00::/8") \
                from None
    return networks


def embedded_ipv4(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 form carries (mapped, compatible, 6to4, NAT64), else
    the address itself."""
    if isinstance(ip, ipaddress.IPv4Address):
        return ip
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64_NETWORK:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if int(ip) >> 32 == 0 and int(ip) > 1:  # ::a.b.c.d, IPv4-compatible (deprecated)
        return ipaddress.IPv4Address(int(ip))
    return ip


def address_refusal(address: str, private_networks: Sequence[IPNetwork] | None) -> str | None:
    """Why connecting to ``address`` is not allowed, or None. ``private_networks`` None:
    any private address is fine (the operator's own webhook)."""
    raw = ipaddress.ip_address(address.split("%", 1)[0])
    ip = embedded_ipv4(raw)
    shown = f"{raw}" if ip == raw else f"{raw} (that is {ip})"
    if ip in METADATA_ADDRESSES or raw in METADATA_ADDRESSES:
        return f"{shown} is a metadata address, never allowed"
    if ip.is_link_local or raw.is_link_local:
        return f"{shown} is link-local, never allowed"
    if ip.is_unspecified or ip.is_multicast:
        return f"{shown} is not a unicast address"
    if isinstance(raw, ipaddress.IPv6Address) and raw.teredo is not None:
        return f"{shown} is a Teredo address, never allowed"
    if ip.is_global and ip not in SHARED_NETWORK:
        return None
    if not (ip.is_loopback or ip.is_private or ip in SHARED_NETWORK):
        return f"{shown} is a reserved address, never allowed"
    if private_networks is None or any(ip in net for net in private_networks
                                       if net.version == ip.version):
        return None
    kind = "loopback" if ip.is_loopback else "private"
    return (f"{shown} is a {kind} address; IMG2IMG_CALLBACK_PRIVATE_NETWORKS must list "
            "its network to allow it")


def resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise CallbackNotAllowed(f"host {host!r} does not resolve: {exc}") from None
    return list(dict.fromkeys(info[4][0] for info in infos))


def check_url(url: str, *, patterns: Sequence[UrlPattern] | None,
              private_networks: Sequence[IPNetwork] | None,
              resolver: Resolver = resolve) -> Target:
    """The connection target for ``url``, or CallbackNotAllowed naming why not.

    ``patterns`` None: no allow-list (the operator's webhook). The host is resolved
    here, once; every address must pass the rules, and the connection goes to the
    first of them, so a DNS answer cannot change between the check and the connect.
    """
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        raise CallbackNotAllowed(f"{url!r} is not an http(s) URL with a host")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise CallbackNotAllowed(f"{url!r} carries credentials (user@host): never allowed")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise CallbackNotAllowed(f"{url!r} has an invalid port") from None
    host = parts.hostname.lower()
    path = parts.path or "/"
    if patterns is not None and not any(p.admits(scheme, host, port, path) for p in patterns):
        raise CallbackNotAllowed(f"{url!r} is not admitted by IMG2IMG_ALLOWED_CALLBACKS")
    if host.rstrip(".") in METADATA_HOSTS:
        raise CallbackNotAllowed(f"{url!r}: {host} is a metadata host, never allowed")
    addresses = resolver(host, port)
    if not addresses:
        raise CallbackNotAllowed(f"{url!r}: {host} resolves to no address")
    for address in addresses:
        why = address_refusal(address, private_networks)
        if why is not None:
            raise CallbackNotAllowed(f"{url!r}: {host} resolves to {why}")
    request_path = path + (f"?{parts.query}" if parts.query else "")
    return Target(scheme=scheme, host=host, port=port, address=addresses[0],
                  path=request_path)
