"""Run Gearman jobs fired by MySQL/MariaDB triggers and write their results back."""

from workerhost.enqueue import enqueue

__version__ = "0.1.0"
__all__ = ["__version__", "enqueue"]
