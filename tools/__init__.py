"""Thin command-line entry points; each exposes get_parser() and main(argv)."""
