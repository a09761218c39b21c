"""``askonce mllp``: the ports of the hl7v2 sources, kept in step with the sources table.

Each enabled hl7v2 source is one listening port (:class:`Listener`); each connection's
messages go one at a time to :func:`sync.hl7intake.receive_message` and are acknowledged
once committed. :class:`MllpService` owns the ports:

- **Stop** (SIGINT, SIGTERM: ``docker stop``) happens between messages: the ports close,
  idle connections close, and a message being taken in is committed and acknowledged
  before its connection closes (up to :data:`STOP_GRACE_S`; a second signal does not wait).
- **Refresh** (every ``ASKONCE_MLLP_REFRESH_S``, and at once on SIGHUP) reads the
  sources again: a new or re-enabled source starts listening, a disabled or removed one
  stops (its connections close between messages), one whose URL moved opens its new port
  before closing the old, one whose TLS options changed serves new connections with them
  (the connections opened under the old options close between messages). Certificate
  files replaced on disk are loaded again (SIGHUP: whether or not they look changed);
  files that do not load leave the port presenting what it had.
- **TLS** is negotiated by the listener itself, after the connection is accepted and
  before a byte of it is read, so that a refused handshake (a plain sender, no client
  certificate, another CA's) is logged with its reason and the peer's address: asyncio's
  own server-side TLS reports those only in debug mode.

Logs carry source ids, ports, peers' addresses and reasons, never a value of a message.
What a sender can repeat at will (a refused handshake, broken framing, a message too
large or empty, a message for a disabled source) is logged once, then at most once a minute per
source, peer and reason, each line counting the occurrences it stands for
(:class:`sync.repeats.Repeats`): an engine that retries every second is one line a
minute, not a flood.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import secrets
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from hl7.mllp import HL7StreamProtocol, HL7StreamReader, InvalidBlockError
from sqlalchemy import select
from sqlalchemy.orm import Session

from connectors.config import HL7V2_KIND as KIND
from fhir_mapping.hl7v2 import ERR_SEGMENT_SEQUENCE, Hl7v2Error, ack
from store.models import Source as SourceRow
from sync import hl7intake
from sync.hl7intake import (
    ACK_REJECT,
    CONTROL_ID_BYTES,
    MAX_MESSAGE_BYTES,
    TLS_KEYS,
    AdtResult,
    Hl7v2ConfigError,
    decode,
    listen_address,
    loopback,
    tls_context,
)
from sync.repeats import Repeats

log = logging.getLogger(__name__)

#: How long a stopping listener waits for the messages being taken in to be committed
#: and acknowledged (below ``docker stop``'s 10 s before it kills the process).
STOP_GRACE_S = 8.0
#: How long a connection to a TLS port may take to finish its handshake.
TLS_HANDSHAKE_TIMEOUT_S = 30.0

#: Called with a source's name and what happened to its port (for the operator's terminal).
Announce = Callable[[str, str], None]


@dataclass(frozen=True)
class Listener:
    """One hl7v2 source's port, and its TLS context (None: plain MLLP)."""

    source_id: int
    name: str
    host: str
    port: int
    tls: ssl.SSLContext | None = field(default=None, compare=False)
    #: The source's TLS options the context was made from (none: plain MLLP).
    tls_config: dict[str, Any] | None = field(default=None, compare=False)

    def describe(self) -> str:
        """Where it listens, and how (for the operator)."""
        where = f"mllp://{self.host}:{self.port}"
        if self.tls is None:
            return where
        if self.tls.verify_mode == ssl.CERT_REQUIRED:
            return f"{where} over TLS, client certificates required"
        return f"{where} over TLS"


def _tls_options(config: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (config or {}).items() if k in TLS_KEYS}


def listener_of(source_id: int, name: str, url: str, config: dict[str, Any] | None) -> Listener:
    """The listener an hl7v2 source's URL and options ask for (reads its TLS files)."""
    host, port = listen_address(url)
    tls = tls_context(config)
    return Listener(source_id, name, host, port, tls, _tls_options(config) if tls else None)


def _enabled_sources(session: Session, names: Sequence[str]) -> list[SourceRow]:
    stmt = select(SourceRow).where(SourceRow.kind == KIND, SourceRow.enabled.is_(True))
    if names:
        stmt = stmt.where(SourceRow.name.in_(list(names)))
    return list(session.scalars(stmt.order_by(SourceRow.id)))


def listeners(session: Session, names: Sequence[str] = ()) -> list[Listener]:
    """The enabled hl7v2 sources (those named, if any) and where each listens; raises
    :class:`Hl7v2ConfigError` for the first whose URL or TLS files cannot be used."""
    return [
        listener_of(s.id, s.name, s.base_url, s.config) for s in _enabled_sources(session, names)
    ]


#: Where a listener bound to every address is reached from its own host.
_WILDCARD_PROBES = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104 - probed, not bound


@dataclass(frozen=True)
class Probe:
    """Whether an hl7v2 source's port accepts connections (``askonce check --mllp``)."""

    name: str
    #: The address connected to: the source's, or the loopback for a wildcard one.
    address: str
    #: Why nothing accepted the connection (None: something did).
    trouble: str | None = None


def probe(session: Session, names: Sequence[str] = (), *, timeout_s: float = 5.0) -> list[Probe]:
    """Connect to the port of every enabled hl7v2 source (those named, if any), as a
    container's healthcheck does from the listener's own host, and close at once: nothing
    is sent, so nothing is taken in, and a TLS port sees a connection closed before its
    handshake (logged at DEBUG from the loopback)."""
    found = []
    for source in _enabled_sources(session, names):
        try:
            host, port = listen_address(source.base_url)
        except Hl7v2ConfigError as exc:
            found.append(Probe(source.name, source.base_url, str(exc)))
            continue
        host = _WILDCARD_PROBES.get(host, host)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
        except OSError as exc:
            found.append(Probe(source.name, address, exc.strerror or type(exc).__name__))
        else:
            found.append(Probe(source.name, address))
    return found


def _files(options: dict[str, Any] | None) -> tuple[tuple[str, int, int], ...]:
    """What the TLS files look like on disk (path, modification time, size): a
    replaced certificate changes it."""
    seen = []
    for key in TLS_KEYS:
        path = (options or {}).get(key)
        if not isinstance(path, str):
            continue
        try:
            stat = os.stat(path)
        except OSError:
            seen.append((path, -1, -1))
        else:
            seen.append((path, stat.st_mtime_ns, stat.st_size))
    return tuple(seen)


def _errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


def handshake_failure(exc: BaseException) -> str:
    """Why a TLS handshake failed, in OpenSSL's words (no byte of the peer's)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or type(exc).__name__).replace("_", " ").lower()
    if isinstance(exc, ConnectionAbortedError):  # asyncio's handshake timeout
        return f"no handshake within {TLS_HANDSHAKE_TIMEOUT_S:g} s"
    if isinstance(exc, ConnectionResetError):
        return "closed by the peer during the handshake"
    return type(exc).__name__


def refusal_level(exc: OSError, peer: str | None) -> int:
    """How loud a failed TLS handshake is logged. A refusal (an ``ssl.SSLError``) is the
    operator's to know: WARNING. A peer that went away before finishing (a load
    balancer's port probe) is not worth a warning: INFO; from this host (a healthcheck,
    ``askonce check --mllp``) not worth a line: DEBUG."""
    if isinstance(exc, ssl.SSLError):
        return logging.WARNING
    if isinstance(exc, ConnectionResetError) and peer is not None and loopback(peer):
        return logging.DEBUG
    return logging.INFO


# -- one connection --------------------------------------------------------------------------


async def _next_block(reader: Any, stopping: asyncio.Event | None) -> bytes | None:
    """The connection's next MLLP block, or None once ``stopping`` is set first (a
    message that has arrived whole by then is still returned, and then taken in)."""
    if stopping is None:
        block: bytes = await reader.readblock()
        return block
    if stopping.is_set():
        return None
    read = asyncio.ensure_future(reader.readblock())
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait((read, stop), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this connection is being cancelled
        read.cancel()
        raise
    finally:
        stop.cancel()
    if read.done():
        return read.result()  # its IncompleteReadError, InvalidBlockError… included
    read.cancel()  # a message cut off here was not acknowledged: the sender sends it again
    return None


def _peer_of(transport: Any) -> str | None:
    """The address of the system at the other end of a connection (no port)."""
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else None


async def _serve_connection(
    reader: Any,
    writer: Any,
    handle: Callable[[str], AdtResult],
    stopping: asyncio.Event | None,
    *,
    source_id: int,
    repeats: Repeats,
) -> None:
    """Messages of one connection, one at a time: each is acknowledged after its commit.
    Once ``stopping`` is set the connection is closed between two messages: the one
    being taken in is committed and acknowledged first. A connection closed for breaking
    the protocol is logged as ``repeats`` admits."""
    peer = _peer_of(writer)
    try:
        while True:
            try:
                block = await _next_block(reader, stopping)
            except asyncio.IncompleteReadError:
                return  # the peer closed the connection (between or inside a message)
            except InvalidBlockError:
                if count := repeats.admit(("framing", source_id, peer)):
                    log.warning(
                        "mllp framing error: no start block; closing the connection",
                        extra={"source_id": source_id, "peer": peer, "count": count},
                    )
                return
            except ValueError:  # the message passed MAX_MESSAGE_BYTES
                reason = f"the message exceeds {MAX_MESSAGE_BYTES} bytes"
                too_big = Hl7v2Error("MSH", reason, code=ERR_SEGMENT_SEQUENCE)
                reply = ack(
                    None, ACK_REJECT, too_big, control_id=secrets.token_hex(CONTROL_ID_BYTES)
                )
                writer.writeblock(reply.encode("utf-8"))
                await writer.drain()
                if count := repeats.admit(("too large", source_id, peer)):
                    log.warning(
                        "mllp message too large; closing the connection",
                        extra={"source_id": source_id, "peer": peer, "count": count},
                    )
                return
            if block is None:
                return
            result = await asyncio.to_thread(handle, decode(block))
            if result.ack:  # enhanced mode may ask for none
                writer.writeblock(result.ack.encode("utf-8"))
                await writer.drain()
    except (ConnectionError, ssl.SSLError):  # the peer went away, or broke the TLS session
        return
    finally:
        writer.close()


class _TlsHandshake(asyncio.Protocol):
    """A connection to a TLS port until its handshake is done. Reading is paused as the
    connection is made, before any byte is read, so the whole ClientHello reaches the
    TLS layer :meth:`asyncio.loop.start_tls` puts in place; a refused handshake is
    logged (as ``repeats`` admits), and a good one hands the connection to the MLLP
    stream."""

    def __init__(
        self,
        stream: Callable[[], asyncio.Protocol],
        target: Listener,
        handshakes: set[asyncio.Task[None]],
        repeats: Repeats,
    ) -> None:
        assert target.tls is not None
        self._stream, self._context, self._target = stream, target.tls, target
        self._handshakes, self._repeats = handshakes, repeats

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()
        task = asyncio.get_running_loop().create_task(self._handshake(transport))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, transport: asyncio.Transport) -> None:
        peer = _peer_of(transport)
        stream = self._stream()
        try:
            secured = await asyncio.get_running_loop().start_tls(
                transport,
                stream,
                self._context,
                server_side=True,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S,
            )
        except OSError as exc:  # ssl.SSLError, a reset, asyncio's handshake timeout
            source_id, reason = self._target.source_id, handshake_failure(exc)
            if count := self._repeats.admit(("handshake", source_id, peer, reason)):
                log.log(
                    refusal_level(exc, peer),
                    "mllp TLS handshake refused",
                    extra={
                        "source_id": source_id,
                        "port": self._target.port,
                        "peer": peer,
                        "reason": reason,
                        "count": count,
                    },
                )
            return
        if secured is None:  # the loop closed the connection meanwhile
            return
        stream.connection_made(secured)


# -- the ports -------------------------------------------------------------------------------


class _Port:
    """One listening socket and what it serves now. A connection keeps the ``stopping``
    event of the moment it was accepted: setting it closes that connection between
    messages (stop, a disabled source, changed TLS options)."""

    def __init__(self, target: Listener) -> None:
        self.target = target
        self.server: asyncio.Server | None = None
        self.files = _files(target.tls_config)
        self.stopping = asyncio.Event()

    @property
    def bound(self) -> tuple[str, int]:
        """The address actually bound (a port 0 becomes the one the OS chose)."""
        assert self.server is not None and self.server.sockets
        address = self.server.sockets[0].getsockname()
        return address[0], address[1]

    def close_connections(self) -> None:
        """The connections accepted so far close between messages; later ones do not."""
        self.stopping.set()
        self.stopping = asyncio.Event()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        self.stopping.set()


class MllpService:
    """The MLLP ports of the hl7v2 sources: opened, refreshed and stopped between messages."""

    def __init__(
        self,
        session_factory: Callable[[], Session],
        *,
        default_region: str | None = None,
        names: Sequence[str] = (),
        announce: Announce | None = None,
    ) -> None:
        self._session_factory = session_factory
        self._default_region = default_region
        self._names = tuple(names)
        self._announce = announce or (lambda name, what: None)
        self._ports: dict[int, _Port] = {}
        #: What senders repeat at will, logged once a minute per source, peer and reason.
        self.repeats = Repeats()
        self._connections: set[asyncio.Task[Any]] = set()
        self._handshakes: set[asyncio.Task[None]] = set()
        self._refreshing: asyncio.Lock | None = None
        self._closed = False
        #: What each source's last refresh could not do (said once, until it changes).
        self._trouble: dict[int, str] = {}

    # -- reading -----------------------------------------------------------------------------

    @property
    def targets(self) -> list[Listener]:
        """What each open port serves, by source id."""
        return [self._ports[k].target for k in sorted(self._ports)]

    def address(self, source_id: int) -> tuple[str, int]:
        """Where a source's port is bound (its actual port number when asked for 0)."""
        return self._ports[source_id].bound

    # -- connections -------------------------------------------------------------------------

    def _stream_factory(self, port: _Port) -> Callable[[], asyncio.Protocol]:
        """The MLLP stream protocol of one connection to ``port`` (that of
        :func:`hl7.mllp.start_hl7_server`), bound to the port's stop event of now."""
        loop = asyncio.get_running_loop()
        source_id, stopping = port.target.source_id, port.stopping
        default_region, repeats = self._default_region, self.repeats
        session_factory = self._session_factory

        def handle(text: str) -> AdtResult:
            return hl7intake.receive_message(
                session_factory, source_id, text, default_region=default_region, repeats=repeats
            )

        async def connected(reader: Any, writer: Any) -> None:
            task = asyncio.current_task()
            if task is not None:
                self._connections.add(task)
                task.add_done_callback(self._connections.discard)
            await _serve_connection(
                reader, writer, handle, stopping, source_id=source_id, repeats=repeats
            )

        def stream() -> asyncio.Protocol:
            reader = HL7StreamReader(limit=MAX_MESSAGE_BYTES, loop=loop)
            protocol: asyncio.Protocol = HL7StreamProtocol(reader, connected, loop=loop)
            return protocol

        return stream

    def _accept(self, port: _Port) -> asyncio.Protocol:
        """The protocol of a connection just accepted on ``port``, as the port serves now."""
        stream = self._stream_factory(port)
        if port.target.tls is None:
            return stream()
        return _TlsHandshake(stream, port.target, self._handshakes, self.repeats)

    # -- opening and refreshing ---------------------------------------------------------------

    async def _bind(self, target: Listener) -> _Port:
        port = _Port(target)
        port.server = await asyncio.get_running_loop().create_server(
            lambda: self._accept(port), target.host, target.port
        )
        log.info("mllp listening", extra={"source_id": target.source_id, "port": target.port})
        return port

    async def open(self, targets: Sequence[Listener]) -> None:
        """Listen on each target's port (port 0: any free one). Raises :class:`OSError`
        when one cannot be bound (the others are closed again)."""
        try:
            for target in targets:
                self._ports[target.source_id] = await self._bind(target)
        except OSError:
            for port in self._ports.values():
                port.close()
            self._ports.clear()
            raise

    def _read_sources(self) -> list[tuple[int, str, str, dict[str, Any] | None]]:
        with self._session_factory() as session:
            return [
                (s.id, s.name, s.base_url, dict(s.config) if s.config else None)
                for s in _enabled_sources(session, self._names)
            ]

    async def refresh(self, *, certificates: bool = False) -> None:
        """Bring the ports in step with the enabled hl7v2 sources (see the module's
        docstring). ``certificates``: load every TLS port's files again, changed or not
        (SIGHUP). Never raises: what cannot be done now is logged and tried again at the
        next refresh."""
        if self._refreshing is None:
            self._refreshing = asyncio.Lock()
        async with self._refreshing:
            if self._closed:
                return
            try:
                rows = await asyncio.to_thread(self._read_sources)
            except Exception as exc:  # the database is away: the ports stay as they are
                log.warning("mllp sources not read", extra={"error": type(exc).__name__})
                return
            if self._closed:
                return
            wanted = {row[0] for row in rows}
            self._trouble = {k: v for k, v in self._trouble.items() if k in wanted}
            for source_id in sorted(set(self._ports) - wanted):
                self._retire(source_id, "stopped listening: the source is disabled or removed")
            for source_id, name, url, config in rows:
                await self._refresh_one(source_id, name, url, config, certificates)

    async def _refresh_one(
        self,
        source_id: int,
        name: str,
        url: str,
        config: dict[str, Any] | None,
        certificates: bool,
    ) -> None:
        current = self._ports.get(source_id)
        options = _tls_options(config)
        try:
            place = listen_address(url)
            if current is not None:
                was = current.target
                if place == (was.host, was.port) and options == (was.tls_config or {}):
                    if was.name != name:
                        current.target = replace(was, name=name)
                    if was.tls is not None and (certificates or _files(options) != current.files):
                        await self._reload(current, config)
                    self._trouble.pop(source_id, None)
                    return
            target = await asyncio.to_thread(listener_of, source_id, name, url, config)
        except Hl7v2ConfigError as exc:  # files deleted or spoilt since they were checked
            self._trouble_with(
                source_id,
                name,
                "mllp source options not usable; its port is left as it was",
                f"{'left as it was' if current else 'not served'}: {exc}",
            )
            return
        if current is not None and place == (current.target.host, current.target.port):
            # Same port, other TLS options: new connections get them at once; those
            # opened under the old ones close between messages and the sender reconnects.
            current.target, current.files = target, _files(target.tls_config)
            current.close_connections()
            self._trouble.pop(source_id, None)
            log.info("mllp TLS options changed", extra={"source_id": source_id})
            self._announce(name, f"now {target.describe()}")
            return
        try:
            port = await self._bind(target)
        except OSError as exc:  # taken, or not ours: tried again at the next refresh
            self._trouble_with(
                source_id,
                name,
                "mllp cannot listen",
                f"cannot listen on {target.describe()}: {exc.strerror or exc}",
                port=target.port,
                error=_errno_name(exc),
            )
            return
        if self._closed:  # stopped meanwhile
            port.close()
            return
        if current is not None:
            self._retire(source_id, f"moved to {target.describe()}")
        self._ports[source_id] = port
        self._trouble.pop(source_id, None)
        self._announce(name, f"listening on {target.describe()}")

    def _trouble_with(
        self,
        source_id: int,
        name: str,
        event: str,
        what: str,
        *,
        port: int | None = None,
        error: str | None = None,
    ) -> None:
        """Log and announce what a refresh could not do for a source: a warning the first
        time, DEBUG while the same trouble lasts (a refresh comes every few seconds)."""
        repeated = self._trouble.get(source_id) == what
        self._trouble[source_id] = what
        log.log(
            logging.DEBUG if repeated else logging.WARNING,
            event,
            extra={"source_id": source_id, "port": port, "error": error},
        )
        if not repeated:
            self._announce(name, what)

    async def _reload(self, port: _Port, config: dict[str, Any] | None) -> None:
        """The port's TLS files loaded again on a context of their own; presented from
        the next connection on. Files that do not load leave the old context in use."""
        port.files = _files(_tls_options(config))
        source_id = port.target.source_id
        try:
            context = await asyncio.to_thread(tls_context, config)
        except Hl7v2ConfigError:
            log.warning("mllp certificate not reloaded", extra={"source_id": source_id})
            self._announce(port.target.name, "certificate not reloaded: its files do not load")
            return
        port.target = replace(port.target, tls=context)
        log.info("mllp certificate reloaded", extra={"source_id": source_id})

    def _retire(self, source_id: int, why: str) -> None:
        port = self._ports.pop(source_id)
        port.close()
        log.info("mllp stopped listening", extra={"source_id": source_id, "port": port.target.port})
        self._announce(port.target.name, why)

    # -- stopping --------------------------------------------------------------------------

    async def close(
        self, *, grace_s: float = STOP_GRACE_S, hurry: asyncio.Event | None = None
    ) -> int:
        """Stop between messages: the ports close, idle connections are closed, and each
        message being taken in is committed and acknowledged before its connection
        closes. Waits for those at most ``grace_s``, or until ``hurry`` is set; a
        connection still busy then is closed without its acknowledgment (its
        transaction commits or rolls back whole, and the sender sends the message
        again). Returns how many connections were closed that way."""
        self._closed = True
        for port in self._ports.values():
            port.close()
        self._ports.clear()
        for handshake in self._handshakes:
            handshake.cancel()  # nothing was taken from those yet
        busy = set(self._connections)
        waits = [asyncio.ensure_future(hurry.wait())] if hurry is not None else []
        deadline = asyncio.get_running_loop().time() + grace_s
        try:
            while busy and not (hurry is not None and hurry.is_set()):
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                await asyncio.wait(
                    {*busy, *waits}, timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
                busy = {task for task in busy if not task.done()}
        finally:
            for wait in waits:
                wait.cancel()
        for task in busy:
            task.cancel()
        if busy:
            log.warning("mllp stopped before acknowledging", extra={"count": len(busy)})
        return len(busy)

    async def __aenter__(self) -> MllpService:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def serve_until(
    service: MllpService,
    stop: asyncio.Event,
    *,
    hurry: asyncio.Event | None = None,
    grace_s: float = STOP_GRACE_S,
    refresh_s: float = 0.0,
) -> int:
    """Serve ``service``'s open ports until ``stop`` is set, refreshing them every
    ``refresh_s`` (0: never), then :meth:`MllpService.close` them. Returns how many
    connections were closed without their acknowledgment."""
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=refresh_s or None)
            except TimeoutError:
                await service.refresh()
    finally:
        cut = await service.close(grace_s=grace_s, hurry=hurry)
    return cut


async def listen_until_signalled(
    service: MllpService,
    targets: Sequence[Listener],
    *,
    grace_s: float = STOP_GRACE_S,
    refresh_s: float = 0.0,
) -> int:
    """Open ``targets`` and :func:`serve_until` SIGINT or SIGTERM (``docker stop``); a
    second one hurries. SIGHUP refreshes the ports at once, certificates included.

    The handlers are the event loop's own (``loop.add_signal_handler``), which wake the
    loop through its self-pipe whichever thread the kernel delivers the signal to. The
    interpreter's default SIGINT handler only runs in the main thread, and does not
    wake a loop blocked in ``epoll_wait`` when another thread (an executor's, the SQLite
    checkpointer's) took the signal: the listener then never stopped."""
    loop = asyncio.get_running_loop()
    stop, hurry = asyncio.Event(), asyncio.Event()
    reloads: set[asyncio.Task[None]] = set()

    def signalled() -> None:
        (hurry if stop.is_set() else stop).set()

    def hangup() -> None:
        task = loop.create_task(service.refresh(certificates=True))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    await service.open(targets)
    signals: list[signal.Signals] = []
    # Windows' event loops take no signal handlers: there Ctrl+C cancels, as asyncio.run does.
    if sys.platform != "win32":
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(number, signalled)
            signals.append(number)
        loop.add_signal_handler(signal.SIGHUP, hangup)
        signals.append(signal.SIGHUP)
    try:
        return await serve_until(service, stop, hurry=hurry, grace_s=grace_s, refresh_s=refresh_s)
    finally:
        for number in signals:
            loop.remove_signal_handler(number)
        for task in reloads:
            task.cancel()
