"""Run Gearman jobs fired by MySQL/MariaDB triggers and write their results back."""

__version__ = "0.1.0"
