"""Talking to a running Tuneserve over HTTP: the client library and the client commands."""
