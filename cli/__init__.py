"""The `taskenv` command: run the service or its parts, manage keys, build the default image."""
