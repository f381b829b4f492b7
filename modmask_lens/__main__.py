"""``python -m modmask_lens``: the ``modmask-lens`` command (``python -m modmask_lens.cli`` cannot run it: the
command's modules import ``modmask_lens.cli`` by name)."""

from modmask_lens.cli import main

if __name__ == "__main__":  # not when pytest's doctest collection imports this module
    main()
