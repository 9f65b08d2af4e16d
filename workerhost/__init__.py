"""Run Gearman jobs fired by MySQL/MariaDB triggers and write their results back.

What application and handler code imports: ``workerhost.enqueue`` (a job in the caller's own
transaction) and ``workerhost.Job`` (what a ``python:`` handler receives). Both import nothing
heavy. The package's layers: model/, config/, store/, gearman/, host/, observe/, udf/, cli/,
console/ and sandbox/ (each one's __init__ says what it holds).
"""

from workerhost.model.job import Job
from workerhost.store.enqueue import enqueue

__version__ = "0.1.0"
__all__ = ["Job", "__version__", "enqueue"]
