"""The decision core, sans-IO: may this tenant do this, does this response
leak, where does this pushed record go, who may approve what. Pure functions
and frozen data over an injected ``now``; table-driven tests in tests/core.

May import: its own modules and the standard library only (no aiohttp, no
sockets, no TLS, no event loop, no file I/O, no gateway errors). Every other
package may import it.
"""
