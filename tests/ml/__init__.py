"""Tests of the ML tasks."""
