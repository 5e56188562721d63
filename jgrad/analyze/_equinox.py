"""Placeholder: adapters registered here in a later commit."""
