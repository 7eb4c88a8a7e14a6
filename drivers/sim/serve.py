"""Serve a bench's simulated instruments over TCP, as LAN instruments serve SCPI on a raw socket.

Each simulated instrument listens on its own port (line-terminated SCPI, one reply line per
query, as on port 5025 of a LAN instrument), so any VISA client reaches it as
`TCPIP::127.0.0.1::<port>::SOCKET`: the real drivers, pyvisa-py and the whole network path run
exactly as on a bench, against the stack model on the wall clock. `cycler sim serve` starts it.
A binary-frame instrument (the BK 8500 load) is served as a raw byte stream, the way a
serial-to-LAN adapter serves a serial port; pyserial reaches it as `socket://127.0.0.1:<port>`,
which the byte transport opens like a serial port. With `serial="pty"` such an instrument is
served on a pseudo-terminal instead (`/dev/pts/N`), which pyserial opens exactly as an RS-232 port.

The instruments share one simulated world, so messages are handled one at a time (a lock), as
they would reach one bench.

The bench's link faults (faults.py) act here, on the wall clock since the server started: a deaf
instrument reads and drops what it is sent, a late reply is held back on its connection (the
messages after it wait, as behind a busy instrument), and a dropped connection is closed by the
server (a client connects again).
"""

from __future__ import annotations

import os
import select
import socketserver
import threading
import time
from dataclasses import dataclass

from ..transport import Delivery, link_faults_of
from .simulation import Simulation


def _exchange(server, message, answer) -> Delivery:
    """The message handled by the instrument, through its link faults if it has any."""
    link = link_faults_of(server.device)
    with server.world_lock:
        return Delivery(answer(message)) if link is None else link.deliver(message, answer)


class _ScpiLineHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for raw in self.rfile:
            message = raw.decode("ascii", errors="replace").rstrip("\r\n")
            delivery = _exchange(self.server, message, self.server.device.handle)
            if delivery.link_dropped:
                return  # the connection closes
            if delivery.reply is not None:
                time.sleep(delivery.delay_s)
                try:
                    self.wfile.write(delivery.reply.encode("ascii", errors="replace") + b"\n")
                    self.wfile.flush()
                except OSError:
                    return  # the client has gone (it gave up on a late reply and connected again)


class _ByteStreamHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while True:
            try:
                data = self.request.recv(256)
            except OSError:
                return  # the client has gone
            if not data:
                return
            delivery = _exchange(self.server, data, self.server.device.receive)
            if delivery.link_dropped:
                return
            if delivery.reply:
                time.sleep(delivery.delay_s)
                try:
                    self.request.sendall(delivery.reply)
                except OSError:
                    return  # the client has gone


def speaks_bytes(device) -> bool:
    """A binary-frame simulator (it has `receive`), not a SCPI one (`handle`)."""
    return callable(getattr(device, "receive", None))


class _InstrumentServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class PtyServer:
    """A binary-frame instrument on the far side of a pseudo-terminal, as behind a USB-serial
    adapter; `serve_forever`, `shutdown` and `server_close` as the socket servers have them.
    `shutdown` waits for the serving loop to end before the descriptors can be closed, so that it
    never reads from a descriptor number the next terminal has been given."""

    def __init__(self, device, world_lock: threading.Lock):
        self.device, self.world_lock = device, world_lock
        self.master, self._slave = os.openpty()
        self.path = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._done = threading.Event()

    def serve_forever(self) -> None:
        try:
            while not self._stop.is_set():
                if not select.select([self.master], [], [], 0.05)[0]:
                    continue
                try:
                    data = os.read(self.master, 256)
                except OSError:
                    return
                delivery = _exchange(self, data, self.device.receive)
                if delivery.reply and not delivery.link_dropped:  # a serial line cannot drop: the reply is lost
                    time.sleep(delivery.delay_s)
                    os.write(self.master, delivery.reply)
        finally:
            self._done.set()

    def shutdown(self) -> None:
        self._stop.set()
        self._done.wait()

    def server_close(self) -> None:
        os.close(self._slave)
        os.close(self.master)


@dataclass
class ServedInstrument:
    name: str
    port: int  # 0 on a pseudo-terminal
    server: _InstrumentServer | PtyServer

    @property
    def resource(self) -> str:
        if isinstance(self.server, PtyServer):
            return self.server.path
        host = self.server.server_address[0]
        if speaks_bytes(self.server.device):
            return f"socket://{host}:{self.port}"
        return f"TCPIP::{host}::{self.port}::SOCKET"


SERIAL_SERVING = ("tcp", "pty")


class SimulationServer:
    """Every instrument of `simulation` on a TCP port of `host` (from `first_port` on; 0: any free
    port); binary-frame (serial) instruments on a pseudo-terminal instead with `serial="pty"`."""

    def __init__(self, simulation: Simulation, host: str = "127.0.0.1", first_port: int = 0, serial: str = "tcp"):
        if serial not in SERIAL_SERVING:
            raise ValueError(f"serial={serial!r}: use one of {', '.join(SERIAL_SERVING)}")
        self.simulation = simulation
        self.world_lock = threading.Lock()
        self.served: list[ServedInstrument] = []
        try:
            for k, (name, device) in enumerate(sorted(simulation.instruments.items())):
                if serial == "pty" and speaks_bytes(device):
                    self.served.append(ServedInstrument(name, 0, PtyServer(device, self.world_lock)))
                    continue
                handler = _ByteStreamHandler if speaks_bytes(device) else _ScpiLineHandler
                server = _InstrumentServer((host, first_port + k if first_port else 0), handler)
                server.device = device
                server.world_lock = self.world_lock
                self.served.append(ServedInstrument(name, server.server_address[1], server))
        except OSError:
            self.close()
            raise
        self._started = False

    def resources(self) -> dict[str, str]:
        return {s.name: s.resource for s in self.served}

    def start(self) -> "SimulationServer":
        for s in self.served:
            threading.Thread(target=s.server.serve_forever, name=f"sim-{s.name}", daemon=True).start()
        self._started = True
        return self

    def close(self) -> None:
        for s in self.served:
            if getattr(self, "_started", False):
                s.server.shutdown()  # waits for serve_forever to return
            s.server.server_close()

    def __enter__(self) -> "SimulationServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
