"""First-party transforms: privacy changes a destination can ask for by name.

``drop_ip`` removes ``context.ip``; ``anonymize_ip`` keeps its network part only
(IPv4 /24, IPv6 /48, as Google Analytics' IP anonymization does), so a tool
still gets a country but not the person's address.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from eventd import Transform, hookimpl

Message = dict[str, Any]


def drop_ip(message: Message) -> Message:
    """Removes context.ip."""
    context = message.get("context")
    if isinstance(context, dict):
        context.pop("ip", None)
    return message


def anonymize_ip(message: Message) -> Message:
    """Keeps the network part of context.ip only (IPv4 /24, IPv6 /48)."""
    context = message.get("context")
    if not isinstance(context, dict) or not isinstance(context.get("ip"), str):
        return message
    try:
        address = ipaddress.ip_address(context["ip"])
    except ValueError:
        # Not an address: it cannot be anonymized, so it is not sent.
        del context["ip"]
        return message
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:a.b.c.d is an IPv4 client
    prefix = 24 if address.version == 4 else 48
    context["ip"] = str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)
    return message


@hookimpl
def eventd_transforms() -> dict[str, Transform]:
    return {"drop_ip": drop_ip, "anonymize_ip": anonymize_ip}
