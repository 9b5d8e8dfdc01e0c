"""The admin API (``/admin/*``, ``/metrics``): reads the Store and
``Dispatcher.status()``, asks the Dispatcher for redrives and replays; never SQL,
never a worker's fields. ``api.py`` holds the routes and :func:`guarded` (the token
check features' ``/admin/*`` routes use too) and the JSON answers they share
(:func:`json_response`, :func:`error_response`), ``params.py`` request parsing.
"""

from eventd.admin.api import Admin, error_response, guarded, json_response
from eventd.admin.params import BadRequest, parse_time

__all__ = [
    "Admin",
    "BadRequest",
    "error_response",
    "guarded",
    "json_response",
    "parse_time",
]
