"""Fakes of third-party systems, written from their specifications, shared by unit and integration tests."""
