"""Command-line adapters: one module per verb, each exposing `register(subparsers)`."""
