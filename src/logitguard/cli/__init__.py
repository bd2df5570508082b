"""One module per ``logitguard`` command, each with ``main(argv)``."""
