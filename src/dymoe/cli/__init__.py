"""Command-line interface: ``dymoe <command>``. One module per subcommand, registered in ``main.COMMANDS``."""
