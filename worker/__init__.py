"""arq workers: create sandboxes and run commands in them with aiodocker."""
