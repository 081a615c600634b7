"""``agent.records.record`` behaves exactly like the frozen, slotted dataclass it replaces."""

from __future__ import annotations

import dataclasses
import math
import pickle

import pytest

from agent.records import field, record


@record
class Point:
    x: float
    label: str = "p"
    notes: list[str] = field(default_factory=list, compare=False, repr=False)


@record(kw_only=True)
class Tagged(Point):
    tag: str = "t"


@dataclasses.dataclass(frozen=True, slots=True)
class PointDataclass:
    x: float
    label: str = "p"
    notes: list[str] = dataclasses.field(default_factory=list, compare=False, repr=False)


def test_repr_is_the_dataclass_repr() -> None:
    """Same text as dataclasses', fields with repr=False left out, subclass fields included."""
    assert repr(Point(1.5, "a", ["n"])) == repr(PointDataclass(1.5, "a", ["n"])).replace(
        "PointDataclass", "Point")
    assert repr(Tagged(x=2, tag="z")) == "Tagged(x=2, label='p', tag='z')"


def test_equality_and_hash_follow_the_compared_fields() -> None:
    """Equal on compared fields only, never equal across classes, hash agrees with equality,
    and a field holding the same NaN object compares equal (tuple semantics)."""
    assert Point(1, "a", ["x"]) == Point(1, "a", ["y"])
    assert Point(1, "a") != Point(2, "a")
    assert Point(1) != Tagged(x=1)
    assert hash(Point(1, "a", ["x"])) == hash(Point(1, "a", ["y"]))
    nan = math.nan
    assert Point(nan) == Point(nan)
    assert (Point(nan) == Point(math.nan)) == (PointDataclass(nan) == PointDataclass(math.nan))
    assert Point(1).__eq__(PointDataclass(1)) is NotImplemented


def test_instances_are_frozen() -> None:
    """Assignment and deletion raise FrozenInstanceError naming the field."""
    p = Point(1)
    with pytest.raises(dataclasses.FrozenInstanceError, match="'x'"):
        p.x = 2  # type: ignore[misc]  # mypy knows it is frozen
    with pytest.raises(dataclasses.FrozenInstanceError, match="'label'"):
        del p.label


def test_dataclass_functions_still_work() -> None:
    """fields, replace, asdict and pickling behave as on any frozen dataclass."""
    t = Tagged(x=1, tag="a")
    assert [f.name for f in dataclasses.fields(t)] == ["x", "label", "notes", "tag"]
    assert dataclasses.replace(t, tag="b") == Tagged(x=1, tag="b")
    assert dataclasses.asdict(t) == {"x": 1, "label": "p", "notes": [], "tag": "a"}
    assert pickle.loads(pickle.dumps(t)) == t
    with pytest.raises(TypeError):
        Tagged(1, "a", [], "b")  # type: ignore[call-arg]  # tag is keyword-only


def test_the_compiled_methods_are_shared() -> None:
    """Two record classes use one __repr__/__eq__/__setattr__ (that is the memory saving)."""
    assert Point.__repr__ is Tagged.__repr__
    assert Point.__eq__ is Tagged.__eq__
    assert Point.__setattr__ is Tagged.__setattr__
    assert PointDataclass.__repr__ is not Point.__repr__
