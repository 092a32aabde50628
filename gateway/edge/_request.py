"""What the data plane reads of a request: the attributes a data listener's
HTTP layer provides, whichever it is (aiohttp's ``web.BaseRequest`` or the
lean server's request, gateway.edge._lean). Nothing else of a request is
used past the edge."""

from __future__ import annotations

import asyncio
from typing import Protocol

from multidict import CIMultiDictProxy


class BodyReader(Protocol):
    async def readany(self) -> bytes:
        """The next body bytes as they arrive; b"" at the end of the body."""


class HttpRequest(Protocol):
    @property
    def method(self) -> str: ...

    @property
    def raw_path(self) -> str: ...

    @property
    def version(self) -> tuple[int, int]: ...

    @property
    def headers(self) -> CIMultiDictProxy[str]: ...

    @property
    def raw_headers(self) -> tuple[tuple[bytes, bytes], ...]: ...

    @property
    def content_type(self) -> str: ...

    @property
    def content_length(self) -> int | None: ...

    @property
    def body_exists(self) -> bool: ...

    @property
    def content(self) -> BodyReader: ...

    @property
    def transport(self) -> asyncio.Transport | None: ...
