"""Shared test kit: real services (PostgreSQL, Redis, OpenBao) and a test PKI, stopped by PID."""
