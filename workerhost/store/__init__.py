"""Everything the host keeps in the application's database, and every statement against it.

db.py is the seam (one connection, re-opened when lost; the transient-error rules); schema.py
names the tables and holds their DDL; ledger.py, letters.py, schedule_table.py and
worker_table.py hold every statement; triggers.py generates the table triggers; enqueue.py,
jobs.py and deadletters.py are what application code and the CLI call."""
