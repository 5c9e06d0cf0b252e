"""One module per `mindeye` subcommand; each exposes ``add_parser(subparsers)``."""
