"""The Gearman UDF from the host's side: what a database server has installed (installed.py)
and building and installing it from the package's own copy of its source (install.py, source/)."""
