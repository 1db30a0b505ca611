"""Reliability and security tests of the server (a package, so that its conftest never shadows tests/server's)."""
