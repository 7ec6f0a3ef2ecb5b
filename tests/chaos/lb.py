"""A small TCP load balancer standing in for a Kubernetes Service in front of several replicas.

Listens on 127.0.0.1:<port>; each accepted connection goes to the next backend port in round-robin
order, skipping backends that refuse the connection (a killed replica), and is then piped both
ways byte for byte (TLS passes through untouched, so client certificates reach the replica). When
no backend accepts, the client connection is closed. Runs its own asyncio loop in a daemon thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterable


class TcpBalancer:
    def __init__(self, port: int, backends: Iterable[int] = (), host: str = "127.0.0.1", connect_timeout: float = 2.0):
        self.host, self.port, self.connect_timeout = host, port, connect_timeout
        self._backends = list(backends)
        self._next = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections: Counter[int] = Counter()  # accepted connections per backend port
        self.refused: Counter[int] = Counter()  # connection attempts a backend refused
        self.dropped = 0  # client connections no backend accepted

    # ------------------------------------------------------------------ control (any thread)
    @property
    def backends(self) -> list[int]:
        with self._lock:
            return list(self._backends)

    @backends.setter
    def backends(self, ports: Iterable[int]) -> None:
        with self._lock:
            self._backends = list(ports)

    def start(self) -> TcpBalancer:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run():
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            try:
                self._server = self._loop.run_until_complete(
                    asyncio.start_server(self._handle, self.host, self.port, reuse_address=True)
                )
            except BaseException as exc:  # noqa: BLE001 — reported to start()
                failure.append(exc)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

        self._thread = threading.Thread(target=run, name=f"lb-{self.port}", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None or not loop.is_running():
            return

        async def shutdown():
            if self._server is not None:
                self._server.close()
            for w in list(self._writers):
                w.close()
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        if self._thread:
            self._thread.join(10)

    def __enter__(self) -> TcpBalancer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ the loop
    def _order(self) -> list[int]:
        with self._lock:
            ports = list(self._backends)
            if not ports:
                return []
            start = self._next % len(ports)
            self._next = (start + 1) % len(ports)
        return ports[start:] + ports[:start]

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self._writers.add(client_w)
        backend = None
        for port in self._order():
            try:
                backend = await asyncio.wait_for(asyncio.open_connection(self.host, port), self.connect_timeout)
            except (TimeoutError, OSError):
                self.refused[port] += 1
                continue
            self.connections[port] += 1
            break
        if backend is None:
            self.dropped += 1
            client_w.close()
            self._writers.discard(client_w)
            return
        back_r, back_w = backend
        self._writers.add(back_w)
        try:
            await asyncio.gather(self._pipe(client_r, back_w), self._pipe(back_r, client_w))
        finally:
            for w in (client_w, back_w):
                w.close()
                self._writers.discard(w)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await src.read(65536)
                if not data:
                    break
                dst.write(data)
                await dst.drain()
            if dst.can_write_eof():
                dst.write_eof()  # half-close: the other direction may still be sending
        except (OSError, RuntimeError):
            dst.close()  # reset or closed peer: tear the pair down
