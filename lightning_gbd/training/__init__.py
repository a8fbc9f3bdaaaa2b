"""Training side: the Lightning callbacks, checkpoint I/O and the sparsity reports."""
