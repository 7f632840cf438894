"""What the API and the workers both import: settings, wire models, Redis keys, job payloads."""
