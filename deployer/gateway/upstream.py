"""The gateway's client for its backends: pooled keep-alive HTTP/1.1 (aiohttp), the body handed
on as raw bytes as they arrive, and every failure classified for the failover rules.

Why aiohttp here and httpx everywhere else: on this path every microsecond is added to every
request. On the 2-core machine of the README's figures, a keep-alive POST through
httpx.AsyncClient costs about 1 ms of client overhead; through aiohttp (C HTTP parser, no
extra async abstraction layer) about 0.05 ms, and streamed chunks are parsed in C too.
Control-plane calls, probes and `status` keep the shared httpx client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import aiohttp

CONNECT, TIMEOUT, TRANSPORT = "connect", "timeout", "transport"


class UpstreamError(Exception):
    """A backend could not be reached or broke off. `kind`: connect (refused, unreachable, no
    connection in time), timeout (no byte within the read timeout), transport (the connection
    broke). The message names the failure, never a header."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class UpstreamResponse:
    """A backend's answer whose status and headers have arrived; the body is still to come."""

    def __init__(self, response: aiohttp.ClientResponse, read_timeout: float) -> None:
        self._response = response
        self._chunks = response.content.iter_any().__aiter__()
        self._read_timeout = read_timeout
        self.status: int = response.status
        self.headers: Mapping[str, str] = response.headers

    async def next_chunk(self) -> bytes | None:
        """The next piece of the body as soon as any of it arrived, or None at its end.
        Raises UpstreamError (timeout: nothing within the read timeout)."""
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            return None
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamError(TIMEOUT, f"no data within {self._read_timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(TRANSPORT, f"the connection broke ({_describe(exc)})") from None

    async def read(self, limit: int) -> bytes:
        """Up to `limit` bytes of the body (for an error message). Never raises."""
        data = b""
        try:
            while len(data) < limit:
                chunk = await self.next_chunk()
                if chunk is None:
                    break
                data += chunk
        except UpstreamError:
            pass
        return data[:limit]

    def close(self) -> None:
        """Hand the connection back to the pool when the body was read to its end, else close
        it (a half-read connection cannot be reused). Idempotent."""
        self._response.release()


class Upstream:
    """One connection pool for all backends. `open` inside the running event loop; `close` it."""

    def __init__(self, *, connect_timeout: float, read_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
                timeout=aiohttp.ClientTimeout(total=None, connect=self.connect_timeout,
                                              sock_connect=self.connect_timeout, sock_read=self.read_timeout),
                auto_decompress=False,  # bytes pass through as sent (we ask for identity anyway)
                trust_env=False,  # no proxy or netrc from the environment: backends are called directly
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> UpstreamResponse:
        """Send the request; return once the status and headers arrived. Raises UpstreamError."""
        await self.open()
        assert self._session is not None
        try:
            response = await self._session.post(url, data=body, headers=headers, allow_redirects=False)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError, aiohttp.InvalidURL) as exc:
            raise UpstreamError(CONNECT, f"cannot connect ({_describe(exc)})") from None
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamError(TIMEOUT, f"no answer within {self.read_timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(TRANSPORT, f"the connection broke before an answer ({_describe(exc)})") from None
        return UpstreamResponse(response, self.read_timeout)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return exc.__class__.__name__ + (f": {text[:160]}" if text else "")

