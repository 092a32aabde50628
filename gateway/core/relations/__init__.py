"""The relations the gateway trusts on its own (DESIGN.md §3): which tenant
holds which resource, in which role, from when to when. :mod:`.index` answers
the decisions' questions; :mod:`.snapshot` is the compact binary form a
relation feed compiles to (bytes in, bytes out: the file I/O is
:mod:`gateway.files`).

May import: the rest of :mod:`gateway.core` and the standard library only.
"""
