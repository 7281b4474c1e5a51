"""heronsfl: split federated learning with lean zeroth-order clients."""

__version__ = "0.1.0"
