"""`workerhost run`: the supervisor and the processes it starts (worker processes, the relay,
the scheduler), and what runs a job (handlers.py, command.py) and settles how it ended
(runner.py, failures.py)."""
