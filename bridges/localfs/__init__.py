"""Bridges to the local file system: a directory of files, a secrets file."""
