"""`python -m digitnet …` (and `torchrun -m digitnet train …`) runs the CLI."""

from digitnet.cli import main

if __name__ == "__main__":
    main()
