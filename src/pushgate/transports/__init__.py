"""Thin transports: move bytes between sockets and the node (WebSocket, SSE)."""
