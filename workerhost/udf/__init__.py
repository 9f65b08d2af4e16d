"""The Gearman UDF from the host's side: what a database server has installed (installed.py)
and building and installing it from the package's own copy of its source (install.py, source/)."""

# The version of the UDF's source this package ships and expects in the server (its GMU_VERSION,
# which gman_udf_status() reports); tests/test_udf_install.py checks that the two agree. Here,
# with nothing imported, so that `workerhost --version` can print it.
UDF_VERSION = "1.3.0"
