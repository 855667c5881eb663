"""Helpers the tests share: the tiny test model, the mirror server as a subprocess."""
