"""ticketbench: reproducible lottery-ticket / iterative magnitude pruning experiments."""

__version__ = "0.1.0"
