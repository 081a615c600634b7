"""Proxy routes: the built-in reverse proxy and the Caddy backend."""
