"""`python -m stackcycler` is the `cycler` command."""

from stackcycler.cli import main

main()
