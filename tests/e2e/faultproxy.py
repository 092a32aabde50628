"""A TCP fault proxy between the gateway and a shared system (test tooling for
the upstream fault tests). TLS passes through untouched; the proxy only delays, drops,
cuts or refuses bytes.

Modes: ``pass``, ``refuse`` (nothing listens), ``blackhole`` (accepts, never
answers), ``latency`` (each chunk delayed), ``drip`` (the answer one byte at a
time), ``reset`` (the answer cut by a TCP reset ``cut_before_end`` bytes
before its end), ``close`` (the same, with a clean close).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct


class FaultProxy:
    def __init__(self) -> None:
        self.target_port = 0
        self.mode = "pass"
        self.latency_s = 0.2
        self.cut_before_end = 40
        self.last_answer_bytes = 0  # size of the last complete answer seen in "pass"
        self._server: asyncio.Server | None = None
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._sock.listen(128)
        self._server = await asyncio.start_server(self._client, sock=self._sock)

    async def set_mode(self, mode: str) -> None:
        # A change of mode is a change of the upstream: connections open now
        # (the gateway's keep-alive pool) are dropped.
        for task in list(self._tasks):
            task.cancel()
        if mode == "refuse" and self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        elif mode != "refuse" and self._server is None:
            self._sock = socket.socket()
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind(("127.0.0.1", self.port))
            await self.start()
        self.mode = mode

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._sock.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_writer: asyncio.StreamWriter | None = None
        pumps: list[asyncio.Task[None]] = []
        try:
            if self.mode == "blackhole":
                while await reader.read(65536):
                    pass
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            answer = {"bytes": 0}
            pumps = [asyncio.create_task(self._pump(reader, up_writer, answer, upstream=True)),
                     asyncio.create_task(self._pump(up_reader, writer, answer, upstream=False))]
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for pump in pumps:
                pump.cancel()
            writers = [w for w in (up_writer, writer) if w is not None]
            for w in writers:  # all closed at once: a second cancellation (set_mode
                with contextlib.suppress(Exception):  # twice in a row) cannot leave one open
                    w.close()
            for w in writers:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await w.wait_closed()
            self._tasks.discard(task)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    answer: dict[str, int], *, upstream: bool) -> None:
        while data := await src.read(65536):
            if upstream:
                if answer["bytes"]:
                    self.last_answer_bytes = answer["bytes"]
                answer["bytes"] = 0  # a new request: a new answer follows
                dst.write(data)
                await dst.drain()
                continue
            if self.mode == "latency":
                await asyncio.sleep(self.latency_s)
            if self.mode in ("reset", "close") and self.last_answer_bytes:
                keep = self.last_answer_bytes - self.cut_before_end - answer["bytes"]
                if keep < len(data):
                    dst.write(data[:max(keep, 0)])
                    await dst.drain()
                    sock = dst.get_extra_info("socket")
                    if self.mode == "reset" and sock is not None:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
                    dst.close()
                    return
            if self.mode == "drip":
                for i in range(len(data)):
                    dst.write(data[i:i + 1])
                    await dst.drain()
                    await asyncio.sleep(0.002)
            else:
                dst.write(data)
                await dst.drain()
            answer["bytes"] += len(data)
