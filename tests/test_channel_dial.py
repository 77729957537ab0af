"""The originate dial string: variable escaping and the two variables Channel owns."""

from __future__ import annotations

import pytest

from genesis.channel import build_dial_string, escape_variable
from genesis.types import ChannelState


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        ("plain", "plain"),
        ("a,b", "a\\,b"),
        ("it's", "it\\'s"),
        ("two words", "'two words'"),
        ("x{y}", "'x{y}'"),
        ("back\\slash", "back\\\\slash"),
        ("", "''"),
        (True, "true"),
        (False, "false"),
        (42, "42"),
        ("Jöhn, \"Q\" {x}", "'Jöhn\\, \"Q\" {x}'"),
    ],
)
def test_escape_variable(value: object, wire: str) -> None:
    assert escape_variable(value) == wire


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\0b", "a}b", "{a", "}{"])
def test_escape_rejects_what_cannot_be_sent(value: str) -> None:
    with pytest.raises(ValueError):
        escape_variable(value)


def test_dial_string_layout() -> None:
    dial = build_dial_string(
        "u-1", "user/1001", {"origination_caller_id_name": "Ann Lee", "tag": "a,b"}
    )
    assert dial == (
        "{origination_uuid=u-1,return_ring_ready=true,"
        "origination_caller_id_name='Ann Lee',tag=a\\,b}user/1001 &park()"
    )


def test_reserved_variables_cannot_be_overridden(caplog: pytest.LogCaptureFixture) -> None:
    dial = build_dial_string(
        "u-2", "user/1001", {"origination_uuid": "evil", "Return_Ring_Ready": "false"}
    )
    assert dial == "{origination_uuid=u-2,return_ring_ready=true}user/1001 &park()"
    assert "origination_uuid" in caplog.text


@pytest.mark.parametrize("name", ["bad name", "a=b", "x,y", "", "{v}"])
def test_invalid_variable_names(name: str) -> None:
    with pytest.raises(ValueError):
        build_dial_string("u", "user/1001", {name: "v"})


@pytest.mark.parametrize("path", ["", "user/1001 &echo()", "user/1001\n"])
def test_invalid_dial_paths(path: str) -> None:
    with pytest.raises(ValueError):
        build_dial_string("u", path, None)


def test_channel_state_names() -> None:
    assert ChannelState.from_freeswitch("CS_EXECUTE") is ChannelState.EXECUTE
