"""Reporters: turn model records into rich output or JSON; never touch ctypes."""
