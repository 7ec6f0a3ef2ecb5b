"""Signing keys, JWKS and JWT mint/verify."""
