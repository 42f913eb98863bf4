"""C{python -m chatroulette.load}: the same as the C{chatroulette-load} console script."""

from .cli import main

main()
