"""Applications on top of the training side: the ``gbd`` recipe runner, the model zoo and
datamodules the recipes name, and ``make demo``."""
