"""modmask-lens: which weights of a transformer does a subtask use?"""

__version__ = "0.1.0"
