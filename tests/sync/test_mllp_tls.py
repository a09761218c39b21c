"""HL7 v2 over MLLP inside TLS: the listener's certificate, and its clients' (mutual TLS)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import socket
import ssl
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hl7.mllp import open_hl7_connection
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from askonce.cli import app
from askonce.logging import JsonFormatter
from connectors.preflight import Preflight
from store import make_engine, make_session_factory
from sync.hl7intake import TLS_KEYS, Hl7v2ConfigError, check_listener, tls_context
from sync.mllp_listener import Listener, listeners, refusal_level
from sync.repeats import Repeats
from sync.runner import PIPELINE_CONFIG_KEYS
from tests.sync.conftest import Pki
from tests.sync.helpers import add_source
from tests.sync.test_hl7v2 import (
    exchange,
    golden_of,
    message,
    pid,
    serving,
    start_askonce_mllp,
    until_listening,
)


def test_tls_options_are_checked(pki: Pki) -> None:
    assert set(TLS_KEYS) <= PIPELINE_CONFIG_KEYS  # not handed to a connector as unknown
    assert tls_context(None) is None and tls_context({"timezone": "UTC"}) is None
    bad = [
        ({"tls_key": pki.path("listener.key")}, "go with tls_cert"),
        ({"tls_cert": pki.path("listener.pem"), "tls_key": 5}, "path of a PEM file"),
        ({"tls_cert": " "}, "path of a PEM file"),
        ({"tls_cert": pki.path("missing.pem")}, "No such file"),
        ({"tls_cert": pki.path("garbage.pem")}, "cannot load the certificate chain"),
        ({"tls_cert": pki.path("listener.pem")}, "cannot load"),  # no key in that file
        ({"tls_cert": pki.path("listener.pem"), "tls_key": pki.path("engine.key")}, "cannot load"),
        (
            {
                "tls_cert": pki.path("listener.pem"),
                "tls_key": pki.path("listener.key"),
                "tls_client_ca": pki.path("garbage.pem"),
            },
            "tls_client_ca: cannot load the CA bundle",
        ),
    ]
    for options, said in bad:
        with pytest.raises(Hl7v2ConfigError, match=said):
            tls_context(options)
    served = {"tls_cert": pki.path("listener.pem"), "tls_key": pki.path("listener.key")}
    server = tls_context(served)
    assert server is not None and server.verify_mode == ssl.CERT_NONE
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2
    mutual = tls_context({**served, "tls_client_ca": pki.path("ca.pem")})
    assert mutual is not None and mutual.verify_mode == ssl.CERT_REQUIRED
    where = Listener(1, "adt", "127.0.0.1", 2575)
    assert where.describe() == "mllp://127.0.0.1:2575"
    assert Listener(1, "adt", "127.0.0.1", 2575, server).describe().endswith(" over TLS")
    assert (
        Listener(1, "adt", "127.0.0.1", 2575, mutual)
        .describe()
        .endswith("over TLS, client certificates required")
    )


def test_sources_check_reports_the_listener(pki: Pki) -> None:
    """``askonce sources check``: the address, plain MLLP off the loopback, files that do
    not load, and the certificate's expiry."""

    def findings(url: str, **options: str) -> list[tuple[str, str, str]]:
        report = Preflight("hl7v2")
        check_listener(url, options, report)
        return [(f.level, f.subject, f.message) for f in report.findings]

    local, anywhere = "mllp://127.0.0.1:2575", "mllp://0.0.0.0:2575"
    assert findings("http://x:1")[0][:2] == ("error", "address")
    assert findings(local) == [("ok", "tls", "plain MLLP, on the loopback only")]
    ((level, subject, said),) = findings(anywhere)
    assert (level, subject) == ("warning", "tls") and "unencrypted" in said
    ((level, _, said),) = findings(anywhere, tls_cert=pki.path("garbage.pem"))
    assert level == "error" and "cannot load" in said
    key = pki.path("listener.key")
    valid = findings(anywhere, tls_cert=pki.path("listener.pem"), tls_key=key)
    ((level, _, said),) = valid
    assert level == "ok" and said.startswith("TLS, the certificate valid until ")
    mutual = findings(
        anywhere,
        tls_cert=pki.path("listener.pem"),
        tls_key=key,
        tls_client_ca=pki.path("ca.pem"),
    )
    assert mutual[0][2].endswith("clients need a certificate of tls_client_ca")
    soon = (datetime.now(UTC) + timedelta(days=10)).date().isoformat()
    ((level, _, said),) = findings(anywhere, tls_cert=pki.path("expiring.pem"), tls_key=key)
    assert level == "warning" and soon in said
    ((level, _, said),) = findings(anywhere, tls_cert=pki.path("expired.pem"), tls_key=key)
    assert level == "error" and "expired on" in said


async def send_one(port: int, text: str, client: ssl.SSLContext | None) -> str | None:
    """``text`` sent as one MLLP message (inside TLS with ``client``); the ACK, or None
    when the listener closed the connection instead of answering."""
    tls: dict[str, Any] = {} if client is None else {"ssl": client, "server_hostname": "127.0.0.1"}
    try:
        reader, writer = await open_hl7_connection("127.0.0.1", port, **tls)
    except (ssl.SSLError, ConnectionError):
        return None  # refused during the handshake (TLS 1.2)
    try:
        writer.writeblock(text.encode("utf-8"))
        await writer.drain()
        return (await asyncio.wait_for(reader.readblock(), 30)).decode()
    except (asyncio.IncompleteReadError, ssl.SSLError, ConnectionError):
        return None  # TLS 1.3 refuses a client's certificate after the client's handshake
    finally:
        writer.close()


def _serve(
    session_factory: sessionmaker[Session],
    source_id: int,
    tls: ssl.SSLContext | None,
    sends: list[tuple[str, ssl.SSLContext | None]],
) -> list[str | None]:
    """Each (MRN, client) of ``sends`` in turn, one message each, to a listener over ``tls``."""

    async def scenario() -> list[str | None]:
        service, port = await serving(
            session_factory, Listener(source_id, "adt", "127.0.0.1", 0, tls)
        )
        try:
            return [
                await send_one(port, message("A04", pid(mrn), control=mrn), client)
                for mrn, client in sends
            ]
        finally:
            await service.close()

    return asyncio.run(scenario())


@pytest.fixture
def source_id(session_factory: sessionmaker[Session]) -> int:
    return add_source(session_factory, "adt", kind="hl7v2", base_url="mllp://127.0.0.1:2575")


def test_mllp_over_tls(pki: Pki, session_factory: sessionmaker[Session], source_id: int) -> None:
    """A listener with a certificate speaks only TLS: a plain MLLP sender is not answered
    and nothing it sent is kept; one that trusts the CA is acknowledged."""
    tls = tls_context({"tls_cert": pki.path("listener.pem"), "tls_key": pki.path("listener.key")})
    plain, anonymous, engine = _serve(
        session_factory,
        source_id,
        tls,
        [("PLAIN1", None), ("ANON1", pki.client(None)), ("ENGINE1", pki.client("engine"))],
    )
    assert plain is None
    assert anonymous is not None and "MSA|AA|ANON1" in anonymous
    assert engine is not None and "MSA|AA|ENGINE1" in engine
    with session_factory() as session:
        assert golden_of(session, source_id, "PLAIN1") is None
        assert golden_of(session, source_id, "ANON1") is not None


def test_mllp_over_mutual_tls(
    pki: Pki,
    session_factory: sessionmaker[Session],
    source_id: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With ``tls_client_ca`` a sender must present a certificate of that CA: none, or
    another CA's, and the connection is closed unanswered with nothing kept. Each
    refusal is logged with its reason and the sender's address."""
    tls = tls_context(
        {
            "tls_cert": pki.path("listener.pem"),
            "tls_key": pki.path("listener.key"),
            "tls_client_ca": pki.path("ca.pem"),
        }
    )
    caplog.set_level(logging.INFO, logger="sync.mllp_listener")
    answers = _serve(
        session_factory,
        source_id,
        tls,
        [
            ("ANON2", pki.client(None)),
            ("STRANGER2", pki.client("stranger")),
            ("PLAIN2", None),
            ("ENGINE2", pki.client("engine")),
        ],
    )
    assert answers[:3] == [None, None, None]
    assert answers[3] is not None and "MSA|AA|ENGINE2" in answers[3]
    with session_factory() as session:
        for refused in ("ANON2", "STRANGER2", "PLAIN2"):
            assert golden_of(session, source_id, refused) is None
        assert golden_of(session, source_id, "ENGINE2") is not None
    refusals = [r for r in caplog.records if r.getMessage() == "mllp TLS handshake refused"]
    assert [r.levelno for r in refusals] == [logging.WARNING] * 3
    assert {getattr(r, "source_id", None) for r in refusals} == {source_id}
    assert {getattr(r, "peer", None) for r in refusals} == {"127.0.0.1"}
    anonymous, stranger, plain = (str(getattr(r, "reason", "")) for r in refusals)
    assert "certificate" in anonymous  # OpenSSL: "peer did not return a certificate"
    assert stranger.startswith("certificate verify failed")
    assert plain and "certificate" not in plain  # not TLS at all ("wrong version number")
    logged = "\n".join(JsonFormatter().format(r) for r in refusals)
    assert "STRANGER2" not in logged and "PLAIN2" not in logged


def test_a_port_probe_is_not_a_refusal(
    pki: Pki,
    session_factory: sessionmaker[Session],
    source_id: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A connection closed before any handshake (a port probe) is not a refusal to look
    into: from this host (a healthcheck) it is logged at DEBUG only, from elsewhere at
    INFO; the port goes on serving."""
    tls = tls_context({"tls_cert": pki.path("listener.pem"), "tls_key": pki.path("listener.key")})
    caplog.set_level(logging.DEBUG, logger="sync.mllp_listener")

    async def scenario() -> str | None:
        service, port = await serving(
            session_factory, Listener(source_id, "adt", "127.0.0.1", 0, tls)
        )
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            text = message("A04", pid("PROBE1"), control="P1")
            return await send_one(port, text, pki.client(None))
        finally:
            await service.close()

    reply = asyncio.run(scenario())
    assert reply is not None and "MSA|AA|P1" in reply
    (probe,) = [r for r in caplog.records if r.getMessage() == "mllp TLS handshake refused"]
    assert probe.levelno == logging.DEBUG
    assert getattr(probe, "reason", None) == "closed by the peer during the handshake"
    assert getattr(probe, "peer", None) == "127.0.0.1"
    # The same from another host (a load balancer), and a real refusal, from anywhere.
    gone = ConnectionResetError("Connection lost")
    assert refusal_level(gone, "10.1.2.3") == logging.INFO
    assert refusal_level(gone, "::1") == logging.DEBUG
    assert refusal_level(gone, None) == logging.INFO
    refused = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    assert refusal_level(refused, "127.0.0.1") == logging.WARNING
    assert refusal_level(ConnectionAbortedError(), "127.0.0.1") == logging.INFO


def test_tls_options_through_the_cli(cli_db: str, pki: Pki) -> None:
    """``sources add`` refuses TLS files that do not load; the listener of a source added
    with good ones serves TLS."""
    url = cli_db
    runner = CliRunner()
    base = ["sources", "add", "adt", "--kind", "hl7v2", "--url", "mllp://127.0.0.1:2575"]
    missing = runner.invoke(app, [*base, "--option", f"tls_cert={pki.path('missing.pem')}"])
    assert missing.exit_code == 2 and "cannot load" in missing.output
    alone = runner.invoke(app, [*base, "--option", f"tls_client_ca={pki.path('ca.pem')}"])
    assert alone.exit_code == 2 and "go with tls_cert" in alone.output
    options = {
        "tls_cert": pki.path("listener.pem"),
        "tls_key": pki.path("listener.key"),
        "tls_client_ca": pki.path("ca.pem"),
    }
    flags = [arg for key, value in options.items() for arg in ("--option", f"{key}={value}")]
    added = runner.invoke(app, [*base, *flags])
    assert added.exit_code == 0, added.output
    checked = runner.invoke(app, ["sources", "check", "adt"])
    assert checked.exit_code == 0, checked.output
    assert "valid until" in checked.output and "tls_client_ca" in checked.output
    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as session:
            (target,) = listeners(session)
        assert target.tls is not None and target.tls.verify_mode == ssl.CERT_REQUIRED
    finally:
        engine.dispose()


def _presented(port: int, pki: Pki, mrn: str) -> tuple[str, str]:
    """A TLS connection's view of the listener: its certificate's expiry, and the ACK of
    one message."""
    client = pki.client(None)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
        client.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        expiry = str((tls.getpeercert() or {}).get("notAfter"))
        reply = exchange(tls, message("A04", pid(mrn), control=mrn))
    return expiry, reply.decode()


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="SIGHUP")
def test_sighup_reloads_the_certificate(pki: Pki, tmp_path: Path) -> None:
    """The real ``askonce mllp``: SIGHUP makes it present a renewed certificate from the
    next connection on; files that do not load leave it presenting the one it had."""
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(pki.path("listener.pem"), live / "cert.pem")
    shutil.copy(pki.path("listener.key"), live / "key.pem")
    tls = ["--option", f"tls_cert={live / 'cert.pem'}", "--option", f"tls_key={live / 'key.pem'}"]
    process, port = start_askonce_mllp(tmp_path, *tls)
    try:
        first, reply = until_listening(process, lambda: _presented(port, pki, "HUP1"))
        assert "MSA|AA|HUP1" in reply
        shutil.copy(pki.path("expiring.pem"), live / "cert.pem")  # renewed: another expiry
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while (renewed := _presented(port, pki, "HUP2"))[0] == first:
            assert time.monotonic() < deadline, "the renewed certificate was not presented"
            time.sleep(0.1)
        assert "MSA|AA|HUP2" in renewed[1]
        (live / "cert.pem").write_text("not a certificate\n")
        process.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert process.poll() is None
        kept, reply = _presented(port, pki, "HUP3")
        assert kept == renewed[0] and "MSA|AA|HUP3" in reply
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0].decode()
    assert process.returncode == 0, output
    assert "over TLS" in output and output.rstrip().endswith("stopped")


def test_a_refusal_repeated_by_a_sender_is_logged_once_a_minute(
    pki: Pki,
    session_factory: sessionmaker[Session],
    source_id: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An engine retrying with the wrong setup is refused every time, but logged once per
    minute per reason, each line counting the refusals it stands for: a line a minute,
    not a line a retry."""
    tls = tls_context(
        {
            "tls_cert": pki.path("listener.pem"),
            "tls_key": pki.path("listener.key"),
            "tls_client_ca": pki.path("ca.pem"),
        }
    )
    caplog.set_level(logging.INFO, logger="sync.mllp_listener")
    now = [1000.0]

    def refusals() -> list[logging.LogRecord]:
        said = "mllp TLS handshake refused"
        return [r for r in caplog.records if r.getMessage() == said]

    async def logged(count: int) -> None:
        for _ in range(300):  # the listener logs in its own task, after the client gave up
            if len(refusals()) >= count:
                return
            await asyncio.sleep(0.01)

    async def scenario() -> list[str | None]:
        service, port = await serving(
            session_factory, Listener(source_id, "adt", "127.0.0.1", 0, tls)
        )
        service.repeats = Repeats(clock=lambda: now[0])
        answers = []
        try:
            for mrn, client in [("PLAIN3", None)] * 3 + [("ANON3", pki.client(None))]:
                text = message("A04", pid(mrn), control=mrn)
                answers.append(await send_one(port, text, client))
                await asyncio.sleep(0.05)
            await logged(2)
            now[0] += 61  # a minute later, the plain sender tries once more
            answers.append(await send_one(port, message("A04", pid("PLAIN3")), None))
            await logged(3)
            text = message("A04", pid("ENGINE3"), control="ENGINE3")
            answers.append(await send_one(port, text, pki.client("engine")))
        finally:
            await service.close()
        return answers

    answers = asyncio.run(scenario())
    assert answers[:5] == [None] * 5  # every attempt refused, logged or not
    assert answers[5] is not None and "MSA|AA|ENGINE3" in answers[5]
    plain, anonymous, again = refusals()
    assert "certificate" not in str(getattr(plain, "reason", ""))
    assert "certificate" in str(getattr(anonymous, "reason", ""))
    assert getattr(again, "reason", None) == getattr(plain, "reason", None)
    # The first of each reason stands for itself; the next plain one for two left out too.
    assert [getattr(r, "count", None) for r in (plain, anonymous, again)] == [1, 1, 3]
    assert '"count": 3' in JsonFormatter().format(again)
