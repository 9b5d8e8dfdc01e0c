"""A generated data set for the report tests, and the answers computed from it in plain
Python, independently of the SQL (the rules of eventd/reports/*.py docstrings and
eventd.identity.links).

People: signed-up users with pre-login events on their first device; some with a
second device used anonymously before they signed in there too; a device shared by
two users (its anonymous events go to the first before the second signs in, to the
second after); two userIds merged into one profile (an alias); anonymous visitors
never identified. Events come from two sources (two schemas).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from eventd.identity.links import IdentityLink

START = datetime(2026, 10, 5, tzinfo=UTC)  # a Monday
CARS = ["vw", "bmw", "fiat"]
STEPS = ["Viewed Car", "Booked Test Drive", "Order Completed"]


@dataclass
class Ev:
    id: str
    source: str
    type: str  # track | page | identify
    ts: datetime
    user_id: str | None
    anonymous_id: str | None
    event: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)

    def message(self) -> dict[str, Any]:
        m: dict[str, Any] = {
            "type": self.type,
            "messageId": self.id,
            "timestamp": self.ts.isoformat(),
            "receivedAt": self.ts.isoformat(),
        }
        if self.user_id:
            m["userId"] = self.user_id
        if self.anonymous_id:
            m["anonymousId"] = self.anonymous_id
        if self.type == "track":
            m["event"] = self.event
            m["properties"] = self.properties
        elif self.type == "page":
            m["name"] = "Home"
            m["properties"] = self.properties
        else:
            m["traits"] = self.properties
        return m


@dataclass
class DataSet:
    events: list[Ev] = field(default_factory=list)
    links: list[IdentityLink] = field(default_factory=list)

    def add(
        self,
        source: str,
        type_: str,
        ts: datetime,
        user: str | None,
        anon: str | None,
        event: str | None = None,
        **props: Any,
    ) -> None:
        self.events.append(
            Ev(f"m{len(self.events):06}", source, type_, ts, user, anon, event, props)
        )

    def link(self, anon: str | None, user: str, profile: str, at: datetime) -> None:
        self.links.append(IdentityLink(anon, user, profile, at))


def generate(seed: int = 16) -> DataSet:
    rng = random.Random(seed)
    ds = DataSet()

    def at(day: int, second: int) -> datetime:
        return START + timedelta(days=day, seconds=second)

    for i in range(48):
        user, device, profile = f"u{i:02}", f"a{i:02}", f"p{i:02}"
        source = "app" if i % 2 else "web"
        day = rng.randrange(0, 24)
        car = rng.choice([*CARS, None])  # some views carry no car
        t0 = rng.randrange(0, 40000)
        # before signing in: a page and a car viewed anonymously
        ds.add(source, "page", at(day, t0), None, device)
        props = {"car": car} if car else {}
        ds.add(source, "track", at(day, t0 + 60), None, device, "Viewed Car", **props)
        signed = t0 + 600
        ds.add(source, "identify", at(day, signed), user, device, plan="pro")
        ds.link(device, user, profile, at(day, signed))
        ds.link(None, user, profile, at(day, signed))
        ds.add(source, "track", at(day, signed + 5), user, device, "Signed Up")
        # the rest of the funnel, sometimes late, out of order, or not at all
        shape = i % 6
        if shape in (0, 1, 2):
            ds.add(source, "track", at(day, signed + 3600), user, None, "Booked Test Drive")
            if shape in (0, 1):
                late = 3 * 86400 if shape == 1 else 7200  # beyond a 2d window when 1
                ds.add(
                    source,
                    "track",
                    at(day, signed + late),
                    user,
                    None,
                    "Order Completed",
                    revenue=rng.choice([10.5, 20.25, 99.0]),
                )
        elif shape == 3:  # ordered before booking: reaches step 2 only
            ds.add(
                source, "track", at(day, signed + 100), user, None, "Order Completed", revenue=5.5
            )
            ds.add(source, "track", at(day, signed + 200), user, None, "Booked Test Drive")
        # return visits
        for _ in range(rng.randrange(0, 6)):
            d = day + rng.randrange(1, 20)
            ds.add(
                source,
                "track",
                at(d, rng.randrange(0, 80000)),
                user,
                None,
                "Viewed Car",
                car=rng.choice(CARS),
            )
        if i % 5 == 0:  # a second device, used anonymously days before signing in there
            second, d2 = f"b{i:02}", day + 2
            ds.add(source, "track", at(d2, 1000), None, second, "Booked Test Drive")
            ds.add(source, "page", at(d2, 1100), None, second)
            ds.link(second, user, profile, at(d2, 5000))
            ds.add(source, "track", at(d2, 5000), user, second, "Signed In")
    # a shared device: u03 signs in first, u10 later; anonymous events around both
    ds.add("web", "track", at(3, 100), None, "shared", "Viewed Car", car="vw")
    ds.link("shared", "u03", "p03", at(3, 200))
    ds.add("web", "track", at(4, 100), None, "shared", "Viewed Car", car="bmw")
    ds.link("shared", "u10", "p10", at(5, 0))
    ds.add("web", "track", at(5, 0), None, "shared", "Viewed Car", car="fiat")  # at the link
    ds.add("web", "track", at(5, 100), None, "shared", "Booked Test Drive")
    ds.add("web", "track", at(5, 200), None, "shared", "Order Completed", revenue=42.0)
    # u20 and u21 are one person (an alias merged their profiles)
    for link in [x for x in ds.links if x.user_id in ("u20", "u21")]:
        ds.links.remove(link)
        ds.link(link.anonymous_id, link.user_id, "p20", link.linked_at)
    # anonymous visitors nobody identified
    for v in range(8):
        day = rng.randrange(0, 24)
        for k in range(rng.randrange(1, 4)):
            ds.add(
                "web",
                "track",
                at(day + k * 2, 300 * v),
                None,
                f"v{v}",
                "Viewed Car",
                car=CARS[v % 3],
            )
    return ds


def generate_shared(seed: int) -> DataSet:
    """A small random data set of tangled identities (what DuckDB's reports group per
    userId and anonymousId before per person): devices linked to zero to three users
    at random moments (ties on linked_at included), users linked without a device or
    not at all, two users of one profile, an anonymousId spelled like a userId, and
    track events of the steps before, at and after the links, from two sources, many
    at one moment (ties on timestamp), most with a car."""
    rng = random.Random(seed)
    ds = DataSet()

    def at(day: int, second: int) -> datetime:
        return START + timedelta(days=day, seconds=second)

    users = [f"u{i}" for i in range(8)]
    profile = {u: f"p{0 if i < 2 else i}" for i, u in enumerate(users)}  # u0, u1: one person
    devices = [*(f"d{i}" for i in range(6)), "u5"]  # "u5" is also a userId; d0 shared
    for device in devices:
        for user in rng.sample(users, rng.randrange(2 if device == "d0" else 0, 4)):
            ds.link(device, user, profile[user], at(rng.randrange(0, 8), rng.choice([0, 3600])))
    for user in users[:6]:
        ds.link(None, user, profile[user], at(rng.randrange(0, 8), 0))
    for n in range(400):
        when = at(rng.randrange(0, 12), rng.choice([0, 3600, rng.randrange(0, 86400)]))
        event = rng.choice([*STEPS, "Signed Up"])
        source = rng.choice(["app", "web"])
        # a car on 3 events of 4, not drawn from rng (the events stay those of the seed)
        props = {"car": CARS[n % 3]} if n % 4 else {}
        if rng.random() < 0.4:
            user = rng.choice(users)
            ds.add(source, "track", when, user, rng.choice([*devices, None]), event, **props)
        else:
            ds.add(source, "track", when, None, rng.choice(devices), event, **props)
    return ds


# -- the answers, in plain Python ------------------------------------------------------


def person(ev: Ev, links: list[IdentityLink]) -> str:
    """eventd.identity.links' rule, as it reads."""
    if ev.user_id:
        profiles = sorted(ln.profile_id for ln in links if ln.user_id == ev.user_id)
        return profiles[0] if profiles else ev.user_id
    assert ev.anonymous_id
    mine = sorted(
        (ln for ln in links if ln.anonymous_id == ev.anonymous_id),
        key=lambda ln: (ln.linked_at, ln.user_id),
    )
    if not mine:
        return ev.anonymous_id
    before = [ln for ln in mine if ln.linked_at <= ev.ts]
    return (before[-1] if before else mine[0]).profile_id


def in_range(evs: Iterable[Ev], since: datetime | None, until: datetime | None) -> list[Ev]:
    return [e for e in evs if (since is None or e.ts >= since) and (until is None or e.ts < until)]


def activity(
    ds: DataSet, since: datetime | None = None, until: datetime | None = None
) -> list[tuple[str, Ev]]:
    return [
        (person(e, ds.links), e)
        for e in in_range(ds.events, since, until)
        if e.type in ("track", "page")
    ]


def funnel(
    ds: DataSet,
    steps: list[str],
    within: timedelta,
    by: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict[str, Any]:
    per: dict[str, list[Ev]] = defaultdict(list)
    for who, e in activity(ds, since, until):
        if e.type == "track" and e.event in steps:
            per[who].append(e)
    total = [0] * len(steps)
    split: dict[str, list[int]] = {}
    for evs in per.values():
        evs.sort(key=lambda e: (e.ts, e.id))
        firsts = [e for e in evs if e.event == steps[0]]
        if not firsts:
            continue
        anchor = firsts[0]
        reached, t = 1, anchor.ts
        for step in steps[1:]:
            nxt = [e for e in evs if e.event == step and t <= e.ts <= anchor.ts + within]
            if not nxt:
                break
            reached, t = reached + 1, nxt[0].ts
        key = "(none)"
        if by is not None and anchor.properties.get(by) is not None:
            key = str(anchor.properties[by])
        row = split.setdefault(key, [0] * len(steps))
        for k in range(reached):
            total[k] += 1
            row[k] += 1
    return {"steps": steps, "total": total, "by": dict(sorted(split.items())) if by else {}}


def period_of(period: str, ts: datetime) -> date:
    d = ts.date()
    if period == "day":
        return d
    if period == "week":
        return d - timedelta(days=d.weekday())
    return d.replace(day=1)


def periods_between(period: str, a: date, b: date) -> int:
    if period == "day":
        return (b - a).days
    if period == "week":
        return (b - a).days // 7
    return (b.year - a.year) * 12 + b.month - a.month


def add_periods(period: str, a: date, n: int) -> date:
    if period == "month":
        m = a.year * 12 + a.month - 1 + n
        return date(m // 12, m % 12 + 1, 1)
    return a + timedelta(days=n * (7 if period == "week" else 1))


def retention(ds: DataSet, start: str, back: str, period: str, n: int) -> dict[str, Any]:
    acts = activity(ds)
    first: dict[str, date] = {}
    for who, e in sorted(acts, key=lambda x: x[1].ts):
        if e.event == start and who not in first:
            first[who] = period_of(period, e.ts)
    returned: dict[str, set[date]] = defaultdict(set)
    for who, e in acts:
        if back == "any" or e.event == back:
            returned[who].add(period_of(period, e.ts))
    cohorts = []
    for c in sorted(set(first.values())):
        members = [w for w, p in first.items() if p == c]
        cohorts.append(
            {
                "start": c.isoformat(),
                "size": len(members),
                "returned": [
                    sum(1 for w in members if add_periods(period, c, k) in returned[w])
                    for k in range(1, n + 1)
                ],
            }
        )
    return {"period": period, "cohorts": cohorts}


def engagement(ds: DataSet, period: str) -> dict[str, Any]:
    acts = activity(ds)
    days = sorted({e.ts.date() for _, e in acts})
    daily: dict[date, set[str]] = defaultdict(set)
    per: dict[date, list[str]] = defaultdict(list)
    for who, e in acts:
        daily[e.ts.date()].add(who)
        per[period_of(period, e.ts)].append(who)
    out = []
    for p in sorted(per):
        people = len(set(per[p]))
        span = [d for d in days_of(period, p) if days[0] <= d <= days[-1]]
        avg = sum(len(daily[d]) for d in span) / len(span)
        out.append(
            {
                "start": p.isoformat(),
                "active_users": people,
                "events": len(per[p]),
                "events_per_user": round(len(per[p]) / people, 4),
                "stickiness": round(avg / people, 4),
            }
        )
    return {"period": period, "periods": out}


def days_of(period: str, p: date) -> list[date]:
    end = add_periods(period, p, 1)
    return [p + timedelta(days=k) for k in range((end - p).days)]


def churn(ds: DataSet, period: str, n: int) -> dict[str, Any]:
    active: dict[date, set[str]] = defaultdict(set)
    for who, e in activity(ds):
        active[period_of(period, e.ts)].add(who)
    last = max(active)
    out = []
    for p in sorted(active):
        if periods_between(period, p, last) < n:
            continue
        later = set().union(
            *(active.get(add_periods(period, p, k), set()) for k in range(1, n + 1))
        )
        churned = len(active[p] - later)
        out.append(
            {
                "start": p.isoformat(),
                "active_users": len(active[p]),
                "churned": churned,
                "churn_rate": round(churned / len(active[p]), 4),
            }
        )
    return {"period": period, "inactive": n, "periods": out}


def revenue(ds: DataSet, event: str, prop: str, period: str) -> dict[str, Any]:
    acts = activity(ds)
    active: dict[date, set[str]] = defaultdict(set)
    first: dict[str, date] = {}
    for who, e in sorted(acts, key=lambda x: x[1].ts):
        active[period_of(period, e.ts)].add(who)
        first.setdefault(who, period_of(period, e.ts))
    money: dict[date, float] = defaultdict(float)
    paying: dict[date, set[str]] = defaultdict(set)
    spent: dict[str, float] = defaultdict(float)
    for who, e in acts:
        if e.event == event and e.properties.get(prop) is not None:
            p = period_of(period, e.ts)
            money[p] += e.properties[prop]
            paying[p].add(who)
            spent[who] += e.properties[prop]
    periods = [
        {
            "start": p.isoformat(),
            "revenue": round(money[p], 2),
            "paying_users": len(paying[p]),
            "active_users": len(active[p]),
            "arpu": round(money[p] / len(active[p]), 2),
            "arppu": round(money[p] / len(paying[p]), 2) if paying[p] else 0.0,
        }
        for p in sorted(active)
    ]
    cohorts = []
    for c in sorted(set(first.values())):
        members = [w for w, p in first.items() if p == c]
        total = sum(spent[w] for w in members)
        cohorts.append(
            {
                "start": c.isoformat(),
                "users": len(members),
                "revenue": round(total, 2),
                "revenue_per_user": round(total / len(members), 2),
            }
        )
    return {
        "period": period,
        "event": event,
        "property": prop,
        "periods": periods,
        "cohorts": cohorts,
    }
