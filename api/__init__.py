"""The HTTP front door: validates, authenticates, enqueues, waits, answers."""
