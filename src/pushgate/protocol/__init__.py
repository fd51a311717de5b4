"""Sans-I/O protocol codecs: no sockets, no asyncio; bytes in, events and bytes out."""
