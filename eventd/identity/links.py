"""The identity link: the one shape the identity graph hands to warehouse stores.

A warehouse's ``identities`` table (Segment's identity-resolution layout, as the
postgres and duckdb destinations keep it) holds one row per link::

    anonymous_id  TEXT NULL      an anonymousId linked to the profile; NULL on the
                                 row that records a userId's membership alone
                                 (written for every userId of a profile, so an
                                 ``alias`` merge of two userIds is visible)
    user_id       TEXT NOT NULL  the userId the anonymousId was linked to
    profile_id    TEXT NOT NULL  the profile both belong to (changes when profiles merge:
                                 the graph then re-sends every row of the merged profile)
    linked_at     TIMESTAMP      when the link began: the timestamp of the event that made it

Rows are upserted on (anonymous_id, user_id): a repeat keeps the first
``linked_at`` and takes the new ``profile_id``.

Who an event belongs to, for reports (the rule every report applies):

- an event with a userId belongs to that userId's ``profile_id`` (any row of it), or
  to the userId itself when no row names it;
- an event with only an anonymousId belongs to the ``profile_id`` of that
  anonymousId's row with the greatest ``linked_at`` at or before the event's
  timestamp; an event before every link of its anonymousId belongs to the row with
  the earliest ``linked_at`` (a visitor's pre-login history goes to the first user who
  signed in on that device; after a second user signs in there, new anonymous events
  go to the second); with no row, to the anonymousId itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class IdentityLink:
    """One row of a warehouse ``identities`` table (see the module docstring)."""

    anonymous_id: str | None
    user_id: str
    profile_id: str
    linked_at: datetime  # timezone-aware, UTC
