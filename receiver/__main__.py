"""`python -m receiver` is the same command as `voicehooks`."""

from receiver.cli.main import main

main()
