"""One module per ``btd-jax`` subcommand: ``add_parser(subparsers)`` and ``run(args) -> int``."""
