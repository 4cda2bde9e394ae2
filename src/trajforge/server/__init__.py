"""The HTTP server: REST API (and, later, the dashboard) over a store."""

from trajforge.server.app import create_app, is_loopback

__all__ = ["create_app", "is_loopback"]
