"""``askonce mllp`` keeps its ports in step with the hl7v2 sources: a refresh (every
ASKONCE_MLLP_REFRESH_S, and on SIGHUP) opens, closes, moves and re-secures them."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hl7.mllp import open_hl7_connection
from sqlalchemy.orm import Session, sessionmaker

from sync import SourceChange, update_source
from sync.mllp_listener import MllpService, Probe, listeners, probe, serve_until
from tests.sekmet_server import free_port
from tests.sync.conftest import Pki
from tests.sync.helpers import add_source
from tests.sync.test_hl7v2 import (
    askonce_env,
    exchange,
    message,
    peer_closed,
    pid,
    start_askonce_mllp,
    until_listening,
)
from tests.sync.test_mllp_tls import send_one


def _add(session_factory: sessionmaker[Session], name: str, port: int, **options: str) -> int:
    return add_source(
        session_factory,
        name,
        kind="hl7v2",
        base_url=f"mllp://127.0.0.1:{port}",
        config=dict(options) or None,
    )


def _change(session_factory: sessionmaker[Session], source_id: int, change: SourceChange) -> None:
    with session_factory() as session:
        update_source(session, source_id, change)
        session.commit()


def _service(
    session_factory: Callable[[], Session],
) -> tuple[MllpService, list[tuple[str, str]]]:
    """A service that records what it announces, as (source name, what happened)."""
    announced: list[tuple[str, str]] = []

    def announce(name: str, what: str) -> None:
        announced.append((name, what))

    return MllpService(session_factory, announce=announce), announced


async def _open_all(service: MllpService, session_factory: Callable[[], Session]) -> None:
    with session_factory() as session:
        await service.open(listeners(session))


async def _ack(port: int, control: str) -> str:
    """The ACK of one plain MLLP message (an A04 for the person ``control``)."""
    reader, writer = await open_hl7_connection("127.0.0.1", port)
    try:
        writer.writeblock(message("A04", pid(control), control=control).encode("utf-8"))
        await writer.drain()
        return (await asyncio.wait_for(reader.readblock(), 30)).decode()
    finally:
        writer.close()


async def _refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    return False


def test_a_refresh_follows_the_sources(session_factory: sessionmaker[Session]) -> None:
    """A source added starts listening, a disabled one stops (its idle connection is
    closed), a moved one listens at its new address only, a re-enabled one listens again."""
    first, second, moved = free_port(), free_port(), free_port()
    a = _add(session_factory, "adt-a", first)

    async def scenario() -> list[tuple[str, str]]:
        service, announced = _service(session_factory)
        async with service:
            await _open_all(service, session_factory)
            idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", first)
            b = _add(session_factory, "adt-b", second)
            await service.refresh()
            assert "MSA|AA|B1" in await _ack(second, "B1")
            _change(session_factory, a, SourceChange(enabled=False))
            await service.refresh()
            assert await peer_closed(idle_reader)
            idle_writer.close()
            assert await _refused(first)
            _change(session_factory, b, SourceChange(url=f"mllp://127.0.0.1:{moved}"))
            await service.refresh()
            assert await _refused(second)
            assert "MSA|AA|B2" in await _ack(moved, "B2")
            _change(session_factory, a, SourceChange(enabled=True))
            await service.refresh()
            assert "MSA|AA|A1" in await _ack(first, "A1")
            assert [t.name for t in service.targets] == ["adt-a", "adt-b"]
        return announced

    announced = asyncio.run(scenario())
    assert announced == [
        ("adt-b", f"listening on mllp://127.0.0.1:{second}"),
        ("adt-a", "stopped listening: the source is disabled or removed"),
        ("adt-b", f"moved to mllp://127.0.0.1:{moved}"),
        ("adt-b", f"listening on mllp://127.0.0.1:{moved}"),
        ("adt-a", f"listening on mllp://127.0.0.1:{first}"),
    ]


def test_a_port_that_cannot_be_bound_is_tried_again(
    session_factory: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    """A new source whose port is taken is logged and announced, and listens at the
    first refresh after the port is free; the other ports serve meanwhile."""
    first, taken = free_port(), free_port()
    _add(session_factory, "adt-a", first)
    caplog.set_level(logging.DEBUG, logger="sync.mllp_listener")

    async def scenario() -> list[tuple[str, str]]:
        service, announced = _service(session_factory)
        blocker = socket.create_server(("127.0.0.1", taken))
        async with service:
            await _open_all(service, session_factory)
            _add(session_factory, "adt-b", taken)
            try:
                await service.refresh()
                await service.refresh()  # the same trouble: said once
                assert "MSA|AA|A1" in await _ack(first, "A1")
            finally:
                blocker.close()
            await service.refresh()
            assert "MSA|AA|B1" in await _ack(taken, "B1")
        return announced

    announced = asyncio.run(scenario())
    assert len(announced) == 2
    assert announced[0][0] == "adt-b" and announced[0][1].startswith(
        f"cannot listen on mllp://127.0.0.1:{taken}: "
    )
    assert announced[1] == ("adt-b", f"listening on mllp://127.0.0.1:{taken}")
    failures = [r for r in caplog.records if r.getMessage() == "mllp cannot listen"]
    assert [r.levelno for r in failures] == [logging.WARNING, logging.DEBUG]
    failed = failures[0]
    assert getattr(failed, "port", None) == taken
    assert getattr(failed, "error", None) == "EADDRINUSE"


def test_a_refresh_without_the_database_keeps_the_ports(
    session_factory: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    """The sources cannot be read (the database is away): the ports stay as they are."""
    port = free_port()
    _add(session_factory, "adt", port)
    away = {"now": False}

    def factory() -> Session:
        if away["now"]:
            raise ConnectionRefusedError("the database is away")
        return session_factory()

    async def scenario() -> str:
        async with MllpService(factory) as service:
            await _open_all(service, session_factory)
            away["now"] = True
            await service.refresh()
            away["now"] = False
            return await _ack(port, "D1")

    assert "MSA|AA|D1" in asyncio.run(scenario())
    (warning,) = [r for r in caplog.records if r.getMessage() == "mllp sources not read"]
    assert getattr(warning, "error", None) == "ConnectionRefusedError"


def test_serve_until_refreshes_on_its_own(session_factory: sessionmaker[Session]) -> None:
    """With ``refresh_s``, a source added while serving starts listening unasked."""
    first, second = free_port(), free_port()
    _add(session_factory, "adt-a", first)

    async def scenario() -> str:
        service, _ = _service(session_factory)
        await _open_all(service, session_factory)
        stop = asyncio.Event()
        served = asyncio.create_task(serve_until(service, stop, refresh_s=0.1))
        _add(session_factory, "adt-b", second)
        deadline = time.monotonic() + 30
        while await _refused(second):
            assert time.monotonic() < deadline, "the new source never listened"
            await asyncio.sleep(0.05)
        reply = await _ack(second, "B1")
        stop.set()
        assert await asyncio.wait_for(served, 30) == 0
        return reply

    assert "MSA|AA|B1" in asyncio.run(scenario())


def _touch(path: Path, copy_of: str) -> None:
    """``path`` replaced by a copy of ``copy_of``, its modification time moved on (so a
    refresh sees it changed even within the file system's time resolution)."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    shutil.copy(copy_of, path)
    os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))


def test_a_refresh_applies_tls_options_and_replaced_files(
    pki: Pki,
    tmp_path: Path,
    session_factory: sessionmaker[Session],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """TLS options set on a plain source: new connections need TLS at once, and the plain
    connection opened before is closed. A client CA bundle replaced on disk is trusted
    from the next refresh on (no SIGHUP needed); a certificate replaced by a file that
    does not load leaves the port presenting the one it had; options removed: plain again."""
    port = free_port()
    source = _add(session_factory, "adt", port)
    live = {name: tmp_path / f"{name}.pem" for name in ("cert", "key", "clients")}
    _touch(live["cert"], pki.path("listener.pem"))
    _touch(live["key"], pki.path("listener.key"))
    _touch(live["clients"], pki.path("ca.pem"))
    options = {
        "tls_cert": str(live["cert"]),
        "tls_key": str(live["key"]),
        "tls_client_ca": str(live["clients"]),
    }
    caplog.set_level(logging.INFO, logger="sync.mllp_listener")

    async def text(mrn: str, client: Any) -> str | None:
        return await send_one(port, message("A04", pid(mrn), control=mrn), client)

    async def scenario() -> list[tuple[str, str]]:
        service, announced = _service(session_factory)
        async with service:
            await _open_all(service, session_factory)
            plain_reader, plain_writer = await asyncio.open_connection("127.0.0.1", port)
            _change(session_factory, source, SourceChange(options=options))
            await service.refresh()
            assert await peer_closed(plain_reader)
            plain_writer.close()
            assert await text("PLAIN1", None) is None
            assert await text("STRANGER1", pki.client("stranger")) is None
            assert "MSA|AA|ENGINE1" in (await text("ENGINE1", pki.client("engine")) or "")
            # The sender's CA changes: the bundle's file is replaced, and nothing else.
            _touch(live["clients"], pki.path("other-ca.pem"))
            await service.refresh()
            assert "MSA|AA|STRANGER2" in (await text("STRANGER2", pki.client("stranger")) or "")
            assert await text("ENGINE2", pki.client("engine")) is None
            live["cert"].write_text("not a certificate\n")
            await service.refresh()
            assert "MSA|AA|STRANGER3" in (await text("STRANGER3", pki.client("stranger")) or "")
            _touch(live["cert"], pki.path("listener.pem"))
            await service.refresh()
            # Options changed, then the files spoilt before a refresh: the port is left as
            # it was (said once), still trusting the other CA.
            trusted = SourceChange(options={"tls_client_ca": pki.path("ca.pem")})
            _change(session_factory, source, trusted)
            live["key"].write_text("not a key\n")
            await service.refresh()
            await service.refresh()
            assert "MSA|AA|STRANGER4" in (await text("STRANGER4", pki.client("stranger")) or "")
            _change(session_factory, source, SourceChange(unset_options=tuple(options)))
            await service.refresh()
            assert "MSA|AA|PLAIN2" in (await text("PLAIN2", None) or "")
        return announced

    announced = asyncio.run(scenario())
    described = f"mllp://127.0.0.1:{port}"
    assert announced[:2] == [
        ("adt", f"now {described} over TLS, client certificates required"),
        ("adt", "certificate not reloaded: its files do not load"),
    ]
    assert announced[2][1].startswith("left as it was: tls_cert/tls_key: cannot load")
    assert announced[3:] == [("adt", f"now {described}")]
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("mllp certificate reloaded") == 2
    assert messages.count("mllp certificate not reloaded") == 1


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="SIGHUP")
def test_sighup_refreshes_the_ports(tmp_path: Path) -> None:
    """The real ``askonce mllp``, its periodic refresh off: a source added and one
    disabled with the CLI take effect at the next SIGHUP, without a restart. Its
    healthcheck, ``askonce check --mllp``, sees each enabled source's port as it is."""
    process, port = start_askonce_mllp(tmp_path, ASKONCE_MLLP_REFRESH_S="0")
    env = askonce_env(tmp_path)
    other = free_port()
    cli = [sys.executable, "-m", "askonce", "sources"]

    def ack(where: int, control: str) -> bytes:
        with socket.create_connection(("127.0.0.1", where), timeout=30) as connection:
            return exchange(connection, message("A04", pid(control), control=control))

    def check() -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "askonce", "check", "--mllp", "--timeout", "5"]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    try:
        assert b"MSA|AA|H1" in until_listening(process, lambda: ack(port, "H1"))
        healthy = check()
        assert healthy.returncode == 0, healthy.stderr
        assert f"adt: listening (127.0.0.1:{port})" in healthy.stderr
        add = [*cli, "add", "adt2", "--kind", "hl7v2", "--url", f"mllp://127.0.0.1:{other}"]
        subprocess.run(add, env=env, check=True, capture_output=True)
        subprocess.run([*cli, "disable", "adt"], env=env, check=True, capture_output=True)
        with pytest.raises(OSError):
            ack(other, "H2")  # not before the SIGHUP
        behind = check()
        assert behind.returncode == 1
        assert f"adt2: not listening on 127.0.0.1:{other} (Connection refused)" in behind.stderr
        assert "adt:" not in behind.stderr  # disabled: not the listener's to serve
        assert "not ok: 1 hl7v2 source(s) not listening" in behind.stderr
        process.send_signal(signal.SIGHUP)
        assert b"MSA|AA|H3" in until_listening(process, lambda: ack(other, "H3"))
        with pytest.raises(OSError):
            ack(port, "H4")
        caught_up = check()
        assert caught_up.returncode == 0, caught_up.stderr
        assert f"adt2: listening (127.0.0.1:{other})" in caught_up.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0].decode()
    assert process.returncode == 0, output
    assert f"adt2: listening on mllp://127.0.0.1:{other}" in output
    assert "adt: stopped listening: the source is disabled or removed" in output
    stopped = check()
    assert stopped.returncode == 1 and "adt2: not listening" in stopped.stderr


def test_a_probe_of_a_wildcard_address_goes_to_the_loopback(
    session_factory: sessionmaker[Session],
) -> None:
    """A source bound to every address (``0.0.0.0``, ``::``) is probed on the loopback,
    as a healthcheck inside the listener's container reaches it; a URL that is not an
    MLLP address is reported, not raised."""
    listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    port = listening.getsockname()[1]
    add_source(session_factory, "wild", kind="hl7v2", base_url=f"mllp://0.0.0.0:{port}")
    add_source(session_factory, "six", kind="hl7v2", base_url=f"mllp://[::]:{free_port()}")
    add_source(session_factory, "odd", kind="hl7v2", base_url="http://example.org/")
    try:
        with session_factory() as session:
            found = {p.name: p for p in probe(session, timeout_s=5)}
            only = probe(session, ["wild"], timeout_s=5)
    finally:
        listening.close()
    assert found["wild"] == Probe("wild", f"127.0.0.1:{port}")
    assert found["six"].address.startswith("[::1]:") and found["six"].trouble
    assert found["odd"].trouble == "an hl7v2 source's URL is mllp://HOST:PORT"
    assert only == [found["wild"]]
