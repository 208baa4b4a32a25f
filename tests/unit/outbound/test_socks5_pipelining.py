"""Pipelining, sans-IO: greeting + CONNECT in one message, and the per-proxy policy that
decides when to send them so (`Pipelining`), bytes and results in, bytes and states out."""

from __future__ import annotations

import pytest

from ztun.outbound.socks5_proto import (
    Command,
    LocalProtocolError,
    Method,
    MethodSelected,
    NoAcceptableMethods,
    PipelineState,
    Pipelining,
    RemoteProtocolError,
    RequestFailed,
    RequestSucceeded,
    Socks5Client,
    encode_request,
)
from ztun.outbound.target import Target

H = bytes.fromhex
V4 = Target("192.0.2.7", 80)
NAME = Target("example.com", 8080)
REPLY_OK_V4 = H("05 00 00 01 7f000001 1f90")  # bound 127.0.0.1:8080


# -- the core -----------------------------------------------------------------------------


def test_pipelined_greeting_carries_the_request_in_the_same_bytes() -> None:
    client = Socks5Client(Command.CONNECT, NAME, pipeline=True)
    # VER NMETHODS NO_AUTH, then VER CMD RSV ATYP=3 LEN "example.com" PORT (RFC 1928 s3, s4)
    assert client.data_to_send() == H("050100") + H("05010003 0b") + b"example.com" + H("1f90")
    assert client.data_to_send() == b""


def test_pipelined_replies_in_one_chunk_with_tunnel_bytes() -> None:
    client = Socks5Client(Command.CONNECT, V4, pipeline=True)
    client.data_to_send()
    events = client.receive_data(H("0500") + REPLY_OK_V4 + b"SSH-2.0-x\r\n")
    assert events == [MethodSelected(Method.NO_AUTH), RequestSucceeded(Target("127.0.0.1", 8080))]
    assert client.data_to_send() == b""  # the request is not sent a second time
    assert client.trailing_data == b"SSH-2.0-x\r\n"


def test_pipelined_replies_byte_by_byte_send_nothing_more() -> None:
    client = Socks5Client(Command.CONNECT, V4, pipeline=True)
    assert client.data_to_send() == H("050100") + encode_request(Command.CONNECT, V4)
    transcript = H("0500") + REPLY_OK_V4
    events = []
    for i in range(len(transcript)):
        events += client.receive_data(transcript[i : i + 1])
        assert client.data_to_send() == b""
    assert events == [MethodSelected(Method.NO_AUTH), RequestSucceeded(Target("127.0.0.1", 8080))]


def test_pipelined_refusal_is_an_event() -> None:
    client = Socks5Client(Command.CONNECT, V4, pipeline=True)
    client.data_to_send()
    assert client.receive_data(H("0500 0505 0001 00000000 0000")) == [
        MethodSelected(Method.NO_AUTH),
        RequestFailed(0x05),
    ]


def test_pipelined_to_a_proxy_that_wants_credentials() -> None:
    client = Socks5Client(Command.CONNECT, V4, pipeline=True)
    client.data_to_send()
    assert client.receive_data(H("05ff")) == [NoAcceptableMethods()]


def test_pipelined_proxy_that_closes_after_the_method_is_a_remote_error() -> None:
    client = Socks5Client(Command.CONNECT, V4, pipeline=True)
    client.data_to_send()
    client.receive_data(H("0500"))
    with pytest.raises(RemoteProtocolError, match="awaiting the reply to the request"):
        client.receive_data(b"")


def test_pipelined_choice_of_a_method_not_offered_is_garbage() -> None:
    client = Socks5Client(Command.CONNECT, V4, pipeline=True)
    client.data_to_send()
    with pytest.raises(RemoteProtocolError, match="not offered"):
        client.receive_data(H("0502"))


def test_no_pipelining_with_credentials() -> None:
    with pytest.raises(LocalProtocolError, match="no-auth greeting only"):
        Socks5Client(Command.CONNECT, V4, username="u", password="p", pipeline=True)


def test_not_pipelined_by_default() -> None:
    client = Socks5Client(Command.CONNECT, V4)
    assert client.data_to_send() == H("050100")
    client.receive_data(H("0500"))
    assert client.data_to_send() == encode_request(Command.CONNECT, V4)


# -- the policy ---------------------------------------------------------------------------


def test_nothing_is_pipelined_before_a_handshake_apart_succeeded() -> None:
    policy = Pipelining()
    assert [policy.begin() for _ in range(3)] == [PipelineState.OFF] * 3
    assert policy.state is PipelineState.UNKNOWN


def test_one_trial_at_a_time_then_on() -> None:
    policy = Pipelining()
    policy.sent_apart_succeeded()
    assert policy.begin() is PipelineState.TRIAL
    assert policy.begin() is PipelineState.OFF  # the trial is still running
    policy.sent_apart_succeeded()  # one of those, carried apart, succeeded: no change
    assert policy.state is PipelineState.TRIAL
    policy.pipelined_answered()
    assert policy.state is PipelineState.ON
    assert [policy.begin() for _ in range(3)] == [PipelineState.ON] * 3


def test_a_handshake_that_may_not_be_the_trial_is_sent_apart_until_on() -> None:
    """A health probe's: it measures the proxy, not pipelining (trial=False)."""
    policy = Pipelining()
    policy.sent_apart_succeeded()
    assert policy.begin(trial=False) is PipelineState.OFF
    assert policy.begin() is PipelineState.TRIAL  # the trial is left to a flow
    policy.pipelined_answered()
    assert policy.begin(trial=False) is PipelineState.ON


def test_a_failed_trial_turns_it_off_for_good() -> None:
    policy = Pipelining()
    policy.sent_apart_succeeded()
    assert policy.begin() is PipelineState.TRIAL
    policy.pipelined_failed()
    policy.sent_apart_succeeded()
    assert policy.state is PipelineState.OFF
    assert policy.begin() is PipelineState.OFF


def test_an_abandoned_trial_is_tried_again() -> None:
    policy = Pipelining()
    policy.sent_apart_succeeded()
    assert policy.begin() is PipelineState.TRIAL
    policy.abandoned()
    assert policy.begin() is PipelineState.TRIAL


def test_a_pipelined_failure_once_on_turns_it_off() -> None:
    policy = Pipelining()
    policy.sent_apart_succeeded()
    policy.begin()
    policy.pipelined_answered()
    policy.pipelined_failed()
    assert policy.begin() is PipelineState.OFF


def test_disabled_never_pipelines() -> None:
    policy = Pipelining(enabled=False)
    policy.sent_apart_succeeded()
    assert policy.begin() is PipelineState.OFF


def _on() -> Pipelining:
    policy = Pipelining()
    policy.sent_apart_succeeded()
    assert policy.begin() is PipelineState.TRIAL
    policy.pipelined_answered()
    assert policy.state is PipelineState.ON
    return policy


def test_cut_short_after_the_method_selection_turns_it_off_once() -> None:
    """The flow's own limit ends a pipelined handshake whose request the proxy dropped:
    its greeting was answered, its request never - the same as a failure."""
    policy = _on()
    assert policy.cut_short(greeting_answered=True) is True
    assert policy.state is PipelineState.OFF
    assert policy.begin() is PipelineState.OFF
    # Other flows pipelined before it turned off end the same way: said only once.
    assert policy.cut_short(greeting_answered=True) is False
    assert policy.pipelined_failed() is False
    assert policy.state is PipelineState.OFF


def test_cut_short_before_the_method_selection_says_nothing() -> None:
    policy = _on()
    assert policy.cut_short(greeting_answered=False) is False
    assert policy.state is PipelineState.ON
    assert policy.begin() is PipelineState.ON


def test_cut_short_trial_after_the_method_selection_is_a_failed_trial() -> None:
    policy = Pipelining()
    policy.sent_apart_succeeded()
    assert policy.begin() is PipelineState.TRIAL
    assert policy.cut_short(greeting_answered=True) is True
    assert policy.begin() is PipelineState.OFF


def test_a_prompt_reply_to_the_redo_blames_the_proxy() -> None:
    """No answer to a pipelined trial within 1 s, yet the request redone apart got its
    reply in 0.2 s: the pipelined request was dropped."""
    policy = Pipelining()
    policy.sent_apart_succeeded()
    assert policy.begin() is PipelineState.TRIAL
    assert policy.begin() is PipelineState.OFF  # the redo decides: no second trial yet
    assert policy.redo_answered(0.2, 1.0) is True
    assert policy.state is PipelineState.OFF
    assert policy.redo_answered(0.2, 1.0) is False  # said once


def test_a_slow_reply_to_the_redo_blames_the_target() -> None:
    policy = Pipelining()
    policy.sent_apart_succeeded()
    assert policy.begin() is PipelineState.TRIAL
    assert policy.redo_answered(1.5, 1.0) is False
    assert policy.state is PipelineState.TRIAL
    assert policy.begin() is PipelineState.TRIAL  # another trial may run
    on = _on()
    assert on.redo_answered(1.5, 1.0) is False
    assert on.begin() is PipelineState.ON
