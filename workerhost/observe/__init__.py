"""What the host tells its operators: logs, Prometheus metrics, heartbeats, `workerhost
status`, `workerhost doctor` and the progress of long commands."""
