"""eventd's first-party destinations, installed as ``eventd_plugins``.

Each subpackage registers through the ``eventd.destinations`` entry-point group,
exactly as a third-party ``eventd-<name>`` package would.
"""
