"""The web edge: the aiohttp application, the HTTP API, and the WebSocket and SSE transports."""
