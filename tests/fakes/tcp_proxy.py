"""A TCP proxy in front of a fake server that can break connections on demand: the next N
requests are answered with a TCP reset (RST, "connection reset by peer") instead of being
forwarded, as when a provider's load balancer or process dies under a request."""

from __future__ import annotations

import selectors
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

_LINGER_RESET = struct.pack("ii", 1, 0)  # close() then sends RST instead of FIN


class ResettingProxy:
    def __init__(self, target_port: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)  # accept() wakes up to notice close()
        self.port: int = self._listener.getsockname()[1]
        self._resets = 0
        self._reset_done = 0
        self._lock = threading.Lock()
        self._closed = threading.Event()

    @property
    def resets_done(self) -> int:
        return self._reset_done

    def reset_next(self, times: int) -> None:
        """Reset the connection carrying each of the next ``times`` requests."""
        with self._lock:
            self._resets += times

    def _take_reset(self) -> bool:
        with self._lock:
            if self._resets <= 0:
                return False
            self._resets -= 1
            self._reset_done += 1
            return True

    def serve(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self._target, timeout=5)
        except OSError:
            _reset(client)
            return
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ, upstream)
        selector.register(upstream, selectors.EVENT_READ, client)
        try:
            while not self._closed.is_set():
                for key, _ in selector.select(timeout=0.5):
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = source.recv(65536)
                    if not data:
                        return
                    if source is client and self._take_reset():
                        _reset(client)
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            selector.close()
            for sock in (client, upstream):
                with suppress(OSError):
                    sock.close()

    def close(self) -> None:
        self._closed.set()
        with suppress(OSError):
            self._listener.close()


def _reset(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        sock.close()


@contextmanager
def resetting_proxy(target_url: str) -> Iterator[tuple[str, ResettingProxy]]:
    """A ``ResettingProxy`` in front of ``http://127.0.0.1:<port>``; yields its base URL."""
    proxy = ResettingProxy(int(target_url.rsplit(":", 1)[1]))
    thread = threading.Thread(target=proxy.serve, name="resetting-proxy", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{proxy.port}", proxy
    finally:
        proxy.close()
        thread.join(timeout=5)
