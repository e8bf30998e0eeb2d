"""``python -m smoothalign``: the ``smoothalign`` program, as the console script runs it
(:func:`smoothalign.cli.entry`: its exit status, and death by SIGINT after Ctrl-C)."""

from smoothalign.cli import entry

if __name__ == "__main__":
    entry()
