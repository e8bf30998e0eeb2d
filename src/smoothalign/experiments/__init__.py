"""Experiments: studies that exercise the library end to end (SPEC §7).

Each study is a module of pure functions (configuration in, records out); its command-line
wrapper (``*_cli.py``) only parses arguments, writes files and prints.
"""
