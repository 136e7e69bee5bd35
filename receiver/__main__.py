"""`python -m receiver` is the same command as `voicehooks`."""

from receiver.cli import main

main()
