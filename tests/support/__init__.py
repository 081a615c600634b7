"""Shared test helpers: configs, logins, the live agent process, deadline polling."""
