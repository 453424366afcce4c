"""``python -m recipetune`` is the ``recipe`` command."""

from .cli import main

main()
