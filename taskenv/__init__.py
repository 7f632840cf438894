"""taskenv: self-hosted task environments for AI agents, behind Dreadnode's task-environment API.

One import package whose subpackages are the repository's top-level folders: `taskenv/api` is a
link to `api/`, and so for worker, shared, cli and bench. The folders stay at the top, where the
design puts them; an installed wheel holds them under `taskenv` only, so nothing named `api` or
`shared` lands in site-packages.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("taskenv")
except PackageNotFoundError:  # a checkout that was never installed
    __version__ = "0+unknown"
