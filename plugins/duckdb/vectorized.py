"""The duckdb destination's fast path: a batch's track events decoded by msgspec into
typed structs (one struct type per event name, its fields the columns its tables
have), read out column by column into Arrow tables that DuckDB inserts as they are.

Owns: what the steady tracks of one schema look like (per event name, the keys of
its ``context`` and ``properties`` and the type of each key's column), learning that
from a batch's decoded messages when the structs refuse one (a new event name, a new
key, a value of another type), deciding whether a batch may take this path, and its
Arrow tables and ``INSERT ... SELECT`` statements. Names, tables and types are those
of ``eventd_plugins.warehouse.rows`` (the rules postgres shares): a key's column is
``identifier()`` of its flattened path, an event's table ``identifier()`` of its name.

A batch's tracks take the path (its other calls go to the Python path) only where it
provably gives the rows the Python path (``warehouse.rows.plan`` and
``batches.columnar``) would give, with nothing to adjust: tracks with unique non-empty
string messageIds, an event name whose table needs no adjustment, timestamps in
RFC 3339 form, string ids; every context and property leaf already a column of its
tables, of a JSON type that goes into the column unchanged (no cast, no drop, no
array), its name needing no adjustment and clashing with no other key. The structs
enforce that per message as msgspec decodes it (an unknown key, a value of another
type, an integer beyond 64 bits: refused), so no survey of the batch's JSON is made
for a steady stream; anything refused is learned (or, when it cannot take the path,
raises NotVectorizable and the caller plans the whole batch in Python, which creates
columns and counts adjustments). Why not DuckDB's JSON functions: their survey
(``json_group_structure``) and ``json_transform`` were ~40 % of a batch's CPU.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

import msgspec
import orjson

from eventd import lazy_import

from ..warehouse.rows import (
    BIGINT,
    BOOLEAN,
    DOUBLE,
    STANDARD_TABLES,
    TEXT,
    TIMESTAMP,
    identifier,
    qualified,
    quote,
    standard_columns,
)

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.compute as pc
else:
    pa = lazy_import("pyarrow")
    pc = lazy_import("pyarrow.compute")

# Timestamps both Python's datetime.fromisoformat and Arrow's cast to a timestamp read
# to the same instant (a zone always given: no session time zone involved).
_TIMESTAMP = (
    r"^\d{4}-\d{2}-\d{2}T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?"
    r"(Z|[+-]([01]\d|2[0-3]):[0-5]\d)$"
)
# The message's own fields a track's standard columns come from.
_IDS = {"messageId": "id", "userId": "user_id", "anonymousId": "anonymous_id"}
_TIMES = {
    "receivedAt": "received_at",
    "sentAt": "sent_at",
    "timestamp": "timestamp",
    "originalTimestamp": "original_timestamp",
}
_INT64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
# A column's type -> the struct field's type (a JSON null: no value, as in Python's
# flatten) and the Python values that go into the column unchanged (what ``fit``
# passes as they are; bool is tested apart, being an int).
_FIELD: dict[str, Any] = {
    TEXT: str | None,
    TIMESTAMP: str | None,  # checked against _TIMESTAMP, then cast by Arrow
    BIGINT: _INT64 | None,
    DOUBLE: float | None,  # a JSON integer decodes as its float, as fit() makes it
    BOOLEAN: bool | None,
}
# A column's type -> the Arrow type its values are handed to DuckDB as.
_ARROW = {TEXT: "string", TIMESTAMP: "string", BIGINT: "int64", DOUBLE: "float64", BOOLEAN: "bool"}
# The standard columns every track gives, and their types.
_STANDARD = {**{c: TEXT for c in _IDS.values()}, **{c: TIMESTAMP for c in _TIMES.values()}}
_NULL = "null"  # a leaf only ever null so far: no column needed

# A key's tree: key -> subtree (an object) or the kinds of value seen (a leaf).
Tree = dict[str, "Tree | set[str]"]


class NotVectorizable(Exception):
    """The batch needs the Python path (the reason is for debugging only)."""


def _kind(value: Any) -> str:
    """What a leaf value is, for the columns it may go into unchanged."""
    if value is None:
        return _NULL
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, int):
        return BIGINT if -(2**63) <= value < 2**63 else "huge"
    if isinstance(value, float):
        return DOUBLE
    if isinstance(value, str):
        return TEXT
    raise NotVectorizable(f"{type(value).__name__} value")  # an array


def _fits(kinds: set[str], column_type: str) -> bool:
    allowed = {
        TEXT: {TEXT},
        TIMESTAMP: {TEXT},
        BIGINT: {BIGINT},
        DOUBLE: {BIGINT, DOUBLE},
        BOOLEAN: {BOOLEAN},
    }.get(column_type, set())
    return kinds - {_NULL} <= allowed


def _merge(tree: Tree, value: Any, keys: tuple[str, ...]) -> None:
    """Add the keys of ``value`` (an object, or None: nothing) to ``tree``."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise NotVectorizable(f"{keys} is not an object")
    for key, v in value.items():
        node = tree.get(key)
        if isinstance(v, dict):
            if node is None:
                node = tree[key] = {}
            if not isinstance(node, dict):
                raise NotVectorizable(f"{(*keys, key)} is an object and a value")
            _merge(node, v, (*keys, key))
        else:
            if node is None:
                node = tree[key] = set()
            if isinstance(node, dict):
                raise NotVectorizable(f"{(*keys, key)} is an object and a value")
            node.add(_kind(v))


def _leaves(tree: Tree, keys: tuple[str, ...]) -> list[tuple[tuple[str, ...], set[str]]]:
    out: list[tuple[tuple[str, ...], set[str]]] = []
    for key, node in tree.items():
        if isinstance(node, dict):
            out += _leaves(node, (*keys, key))
        else:
            out.append(((*keys, key), node))
    return out


@dataclass
class _Event:
    """One event name's shape: its table, its context and properties trees, and what
    reading its structs gives (set by :meth:`Shapes._build`)."""

    table: str
    context: Tree = field(default_factory=dict)
    properties: Tree = field(default_factory=dict)
    struct: type[msgspec.Struct] | None = None
    # column -> (the attributes that lead to it from a struct, its type)
    columns: dict[str, tuple[tuple[str, ...], str]] = field(default_factory=dict)
    context_columns: list[str] = field(default_factory=list)


@dataclass
class Load:
    """A batch's tracks as Arrow tables and the statements that insert them: the view
    name each table is registered as, each table's plain insert and its form that
    skips loaded ids, and the indexes of the batch's other calls (the Python path's)."""

    views: dict[str, pa.Table]
    inserts: list[tuple[str, str]]
    left: list[int]


def _struct(
    tree: Tree, keys: tuple[str, ...], types: Mapping[tuple[str, ...], str]
) -> tuple[Any, dict[tuple[str, ...], tuple[str, ...]]]:
    """A struct type for ``tree`` (its leaves typed by ``types``: leaf keys -> column
    type, or _NULL), refusing unknown keys, and {attribute path: leaf keys} of the
    leaves that have a column. Fields are ``f0``, ``f1``... renamed to the JSON keys
    (which need not be Python names)."""
    fields: list[tuple[str, Any, Any]] = []
    rename: dict[str, str] = {}
    paths: dict[tuple[str, ...], tuple[str, ...]] = {}
    for key, node in tree.items():
        attr = f"f{len(fields)}"
        rename[attr] = key
        if isinstance(node, dict):
            inner, inner_paths = _struct(node, (*keys, key), types)
            fields.append((attr, inner, msgspec.field(default_factory=inner)))
            paths.update({(attr, *p): k for p, k in inner_paths.items()})
        else:
            leaf = types[(*keys, key)]
            fields.append((attr, None if leaf == _NULL else _FIELD[leaf], None))
            if leaf != _NULL:
                paths[(attr,)] = (*keys, key)
    # gc=False: a batch's thousands of structs (no cycles: scalars and structs) kept
    # out of the cyclic collector, whose passes over them tripled the decode's cost
    # (measured: ~9 -> ~3.5 us a message on this box)
    return msgspec.defstruct(
        "Object", fields, rename=rename, forbid_unknown_fields=True, gc=False
    ), paths


class Shapes:
    """What one schema's steady tracks look like, learned from the batches, and the
    decoder that holds a message to it. Valid while the tables' columns it was
    learned against stand (the loader drops it when it forgets its column cache)."""

    def __init__(self) -> None:
        self.events: dict[str, _Event] = {}
        self.decoder: msgspec.json.Decoder[Any] | None = None

    def load(
        self,
        bodies: Sequence[bytes],
        columns: Mapping[str, Mapping[str, str]],
        schema: str,
        skipping: Callable[[str, str, str], str],
    ) -> Load:
        """The batch's tracks (``bodies``: stored JSON) as a :class:`Load`, given the
        known columns of the schema's tables (table -> {column: type}) and the
        loader's rule for skipping loaded ids (``skipping(insert, table, target)``).
        Raises NotVectorizable when the batch needs the Python path."""
        decoded: list[Any] = [None] * len(bodies)
        refused: dict[int, dict[str, Any]] = {}
        left: list[int] = []
        decode = self.decoder.decode if self.decoder is not None else None
        for i, body in enumerate(bodies):
            if decode is not None:
                try:
                    decoded[i] = decode(body)
                    continue
                except msgspec.DecodeError:  # refused (or not JSON: the Python path's)
                    pass
            try:
                message = orjson.loads(body)
            except orjson.JSONDecodeError:
                message = None
            if isinstance(message, dict) and message.get("type") == "track":
                refused[i] = message
            else:
                left.append(i)
        if len(left) == len(bodies):
            raise NotVectorizable("no tracks")
        if refused:
            self._learn(list(refused.values()), columns)
            assert self.decoder is not None
            for i, body in enumerate(bodies):
                if decoded[i] is not None or i in refused:  # again: the structs changed
                    try:
                        decoded[i] = self.decoder.decode(body)
                    except msgspec.DecodeError as exc:  # a null context, say
                        raise NotVectorizable(str(exc)) from exc
        return self._tables(decoded, left, columns, schema, skipping)

    # -- learning ---------------------------------------------------------------------

    def _learn(
        self, messages: Sequence[Mapping[str, Any]], columns: Mapping[str, Mapping[str, str]]
    ) -> None:
        """Add the shapes of ``messages`` (decoded tracks) to what is known, and rebuild
        the decoder. Raises NotVectorizable (and keeps what it knew) when one of
        them cannot take the path."""
        events = copy.deepcopy(self.events)
        for m in messages:
            event = m.get("event")
            if not isinstance(event, str):
                raise NotVectorizable("a track without an event name")
            if event not in events:
                table, changes = identifier(event)
                if changes or not table or table in STANDARD_TABLES:
                    raise NotVectorizable(f"event name {event!r} needs adjusting")
                events[event] = _Event(table)
            e = events[event]
            _merge(e.context, m.get("context"), ("context",))
            _merge(e.properties, m.get("properties"), ("properties",))
        for event, e in events.items():
            self._build(event, e, columns)
        self.events = events
        self.decoder = msgspec.json.Decoder(
            Union[tuple(e.struct for e in events.values())]  # noqa: UP007
        )

    @staticmethod
    def _build(event: str, e: _Event, columns: Mapping[str, Mapping[str, str]]) -> None:
        """``e``'s struct and column readers, checked against its tables' columns."""
        tracks, own = columns.get("tracks"), columns.get(e.table)
        if tracks is None or own is None:
            raise NotVectorizable(f"table {e.table!r} not made yet")
        standard = standard_columns(e.table)
        found: dict[str, tuple[str, ...]] = {}
        types: dict[tuple[str, ...], str] = {}
        for keys, kinds in _leaves(e.context, ("context",)) + _leaves(e.properties, ()):
            path = "_".join(keys)
            column, changes = identifier(path)
            if changes or not column or column in standard:
                raise NotVectorizable(f"key {keys} needs adjusting")
            if found.setdefault(column, keys) != keys:
                raise NotVectorizable(f"two keys land in column {column!r}")
            column_type = own.get(column)
            if keys[0] == "context" and tracks.get(column) != column_type:
                column_type = None  # a context column is tracks' too, of one type
            if column_type is None or column_type not in _FIELD:  # missing, altered by hand
                if kinds != {_NULL}:
                    raise NotVectorizable(f"{keys}: column missing or of another type")
                types[keys] = _NULL
            elif not _fits(kinds, column_type):
                raise NotVectorizable(f"{keys} does not fit {e.table}.{column}")
            else:
                types[keys] = column_type
        context, context_paths = _struct(e.context, ("context",), types)
        properties, property_paths = _struct(e.properties, (), types)
        top: list[tuple[str, Any, Any]] = [
            ("type", Literal["track"], msgspec.NODEFAULT),
            ("messageId", str, msgspec.NODEFAULT),
            *((key, str | None, None) for key in ("userId", "anonymousId", *_TIMES)),
            ("context", context, msgspec.field(default_factory=context)),
            ("properties", properties, msgspec.field(default_factory=properties)),
        ]
        # unknown top-level keys (integrations, channel...) are what Python ignores too
        e.struct = msgspec.defstruct(
            "Track",
            top,
            tag_field="event",
            tag=event,
            forbid_unknown_fields=False,
            gc=False,
        )
        e.columns = {
            column: ((attr,), _STANDARD[column])
            for attr, column in (*_IDS.items(), *_TIMES.items())
        }
        e.context_columns = []
        for top_attr, paths in (("context", context_paths), ("properties", property_paths)):
            for attrs, keys in paths.items():
                column = identifier("_".join(keys))[0]
                e.columns[column] = ((top_attr, *attrs), types[keys])
                if top_attr == "context":
                    e.context_columns.append(column)

    # -- the batch's tables -----------------------------------------------------------

    def _tables(
        self,
        decoded: Sequence[Any],
        left: Sequence[int],
        columns: Mapping[str, Mapping[str, str]],
        schema: str,
        skipping: Callable[[str, str, str], str],
    ) -> Load:
        """The :class:`Load` of the batch's ``decoded`` tracks (None at the others),
        one Arrow table per event name and one for ``tracks``. Raises
        NotVectorizable where a value needs the Python path after all."""
        groups: dict[str, list[Any]] = {}
        for m in decoded:
            if m is not None:
                groups.setdefault(type(m).__struct_config__.tag, []).append(m)
        ids = [m.messageId for ms in groups.values() for m in ms]
        if "" in ids or len(set(ids)) != len(ids):
            raise NotVectorizable("an empty or repeated messageId")
        standard = list(_STANDARD)
        views: dict[str, pa.Table] = {}
        inserts: list[tuple[str, str]] = []
        tracks: list[pa.Table] = []
        for event, ms in groups.items():
            e = self.events[event]
            level: dict[tuple[str, ...], list[Any]] = {}
            arrays = {c: _array(c, t, _read(ms, a, level)) for c, (a, t) in e.columns.items()}
            arrays["event"] = pa.array([e.table] * len(ms), pa.string())
            arrays["event_text"] = pa.array([event] * len(ms), pa.string())
            table = pa.table(arrays)
            view = f"eventd_event_{len(views)}"
            views[view] = table
            inserts.append(_insert(schema, e.table, view, list(arrays), skipping))
            tracks.append(table.select([*standard, "event", "event_text", *e.context_columns]))
        views["eventd_tracks"] = pa.concat_tables(tracks, promote_options="default")
        names = views["eventd_tracks"].column_names
        inserts.insert(0, _insert(schema, "tracks", "eventd_tracks", names, skipping))
        return Load(views, inserts, list(left))


def _read(
    structs: list[Any], attrs: tuple[str, ...], level: dict[tuple[str, ...], list[Any]]
) -> list[Any]:
    """The value each struct holds at ``attrs`` (attribute names, outermost first),
    each nested level's structs read once for all its leaves (``level``: what was
    read so far), not once a leaf (~40 % of the reading's cost)."""
    if attrs not in level:
        parent = _read(structs, attrs[:-1], level) if len(attrs) > 1 else structs
        level[attrs] = list(map(operator.attrgetter(attrs[-1]), parent))
    return level[attrs]


def _array(column: str, column_type: str, values: list[Any]) -> pa.Array:
    """A column's values (as the structs hold them) as the Arrow array DuckDB inserts
    unchanged: timestamps checked and parsed (Arrow reads the form _TIMESTAMP allows
    to the instant Python's fromisoformat does), an empty userId or anonymousId null
    (the Python path's rule)."""
    if column_type == TIMESTAMP:
        text = pa.array(values, pa.string())
        matched = pc.match_substring_regex(text, _TIMESTAMP)
        if not pc.all(pc.or_kleene(pc.is_null(text), matched)).as_py():
            raise NotVectorizable(f"{column} not in RFC 3339 form")
        try:
            return pc.cast(text, pa.timestamp("us", tz="UTC"))
        except pa.ArrowInvalid as exc:  # February 30th: Python drops it
            raise NotVectorizable(f"{column}: {exc}") from exc
    array = pa.array(values, pa.type_for_alias(_ARROW[column_type]))
    if column in ("user_id", "anonymous_id"):
        return pc.if_else(pc.equal(array, ""), pa.scalar(None, pa.string()), array)
    return array


def _insert(
    schema: str,
    table: str,
    view: str,
    names: Sequence[str],
    skipping: Callable[[str, str, str], str],
) -> tuple[str, str]:
    """The plain insert of ``view``'s columns into ``schema.table`` (``$1``: the load
    time), and its form that skips loaded ids."""
    target = qualified(schema, table)
    columns = ", ".join(quote(c) for c in names)
    plain = (
        f"INSERT INTO {target} ({columns}, uuid_ts)"
        f" SELECT {columns}, CAST($1 AS TIMESTAMPTZ) FROM {view}"
    )
    return plain, skipping(plain, table, target)
