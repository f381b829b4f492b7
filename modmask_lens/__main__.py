"""``python -m modmask_lens``: the ``modmask-lens`` command (as ``python -m modmask_lens.cli``)."""

from modmask_lens.cli import main

if __name__ == "__main__":  # not when pytest's doctest collection imports this module
    main()
