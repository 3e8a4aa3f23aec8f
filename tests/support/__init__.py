"""Shared test support: real services, chosen in the order DESIGN.md gives."""
