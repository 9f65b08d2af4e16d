"""`workerhost sandbox`: a throwaway gearmand and MariaDB or MySQL under one directory, for
the demo, the tests and trying things out. Not on the run path: nothing else imports it."""
