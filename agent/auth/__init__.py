"""Authentication and authorization: passwords, tokens, sessions, roles."""

from agent.auth.passwords import PasswordHasher
from agent.auth.principal import ROLES, Principal, Role, role_allows
from agent.auth.service import AuthService, TokenPair

__all__ = ["ROLES", "AuthService", "PasswordHasher", "Principal", "Role", "TokenPair", "role_allows"]
