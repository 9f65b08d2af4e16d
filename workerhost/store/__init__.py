"""Everything the host keeps in the application's database, and every statement against it.

db.py is the seam (one connection, re-opened when lost; the transient-error rules) and
grants.py reads the server's grants; schema.py names the tables (and the view
workerhost_jobs) and holds their DDL and migrations. Every statement lives in one module per
table or concern: ledger.py (shipping, claiming, leasing), ledger_pages.py (the ledger a page
at a time), job_control.py (pause, resume, one row's actions), limit_rows.py (concurrency
slots and rate buckets), letters.py (attempts, dead letters, refused deliveries),
schedule_table.py, worker_table.py (heartbeats), sample_table.py (the console's charts) and
logout_table.py (the console's ended sessions). triggers.py generates the table triggers;
enqueue.py, jobs.py and deadletters.py are what application code and the CLI call."""
