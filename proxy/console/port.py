"""The base of the console's own listening sockets (admin port, metrics HTTP)."""

from __future__ import annotations

import asyncio


class ConsolePort:
    """A listening socket of the console (admin port, metrics HTTP): bound port and closing."""

    _server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (the config may ask for port 0)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def close(self) -> None:
        """Stop accepting."""
        if self._server is not None:
            self._server.close()

    async def wait_closed(self) -> None:
        self.close()
        if self._server is not None:
            await self._server.wait_closed()
