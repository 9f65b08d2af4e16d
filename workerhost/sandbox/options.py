"""The sandbox's choices that the command line offers, with their defaults.

A module of constants only, so that every verb's parser can name them without importing the
sandbox (processes, sockets, files) on the way to `workerhost run`.
"""

# The database servers a sandbox can run, and the name of each one's process.
DATABASE_SERVERS = {"mariadb": "mariadbd", "mysql": "mysqld"}
DEFAULT_DATABASE_SERVER = "mariadb"
# The MySQL lines a sandbox can run, newest first: "mysql:8.0" picks one; plain "mysql" means
# the default image (the newest line, or what WORKERHOST_MYSQL_IMAGE names).
MYSQL_VERSIONS = ("9", "8.4", "8.0")
MYSQL_REPOSITORY = "workerhost-mysql"  # the images scripts/mysql-image.sh makes
SERVER_CHOICES = ("mariadb", "mysql", *(f"mysql:{version}" for version in MYSQL_VERSIONS))
# gearmand's queue: "builtin" keeps jobs in memory only; "libsqlite3" keeps background jobs
# across restarts (a file under DIR, one fsync per job added and removed: ten times slower end
# to end). Memory is the default: the ledger in the database keeps every job a trigger fired
# until its effect commits, and ships again what a restarted gearmand forgot.
PERSISTENT_QUEUE = "libsqlite3"
MEMORY_QUEUE = "builtin"
GEARMAN_QUEUES = (MEMORY_QUEUE, PERSISTENT_QUEUE)
DEFAULT_QUEUE = MEMORY_QUEUE
# gearmand's I/O threads: 0 runs I/O and the queue in one thread. Each job then crosses no
# thread hand-off inside gearmand, which halves the round trip a trigger waits for (27 against
# 42 to 47 us here, measured by `make bench`); gearmand's own default is 4.
GEARMAN_THREADS = 0

__all__ = ["DATABASE_SERVERS", "DEFAULT_DATABASE_SERVER", "DEFAULT_QUEUE", "GEARMAN_QUEUES",
           "GEARMAN_THREADS", "MEMORY_QUEUE", "MYSQL_REPOSITORY", "MYSQL_VERSIONS",
           "PERSISTENT_QUEUE", "SERVER_CHOICES"]
