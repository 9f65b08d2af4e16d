"""workerhost.yaml, read and checked: settings.py holds the frozen dataclasses and every
default, load.py builds them (yamlfile.py reads the YAML safely, converters.py turns each raw value
into a typed one, sqlcheck.py reads an sql: handler's placeholders)."""
