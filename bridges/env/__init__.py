"""Bridges to the process environment: secrets from environment variables."""
