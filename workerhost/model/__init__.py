"""What a job is, independent of any server: the Job a handler receives, how its ledger row
is named in its Gearman unique, and when a schedule's slots fall. No I/O here."""
