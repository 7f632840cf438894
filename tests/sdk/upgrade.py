"""Runs inside .venv-sdk: what the SDK sees from a taskenv with a minimum client version. The
SDK's own `_DN_TEST_VERSION` variable makes it identify as an older release.

Usage: python upgrade.py BASE_URL API_KEY ORG WORKSPACE
"""

import json
import sys

from dreadnode.app.api.client import ApiClient
from dreadnode.version import VERSION


def main(base_url: str, key: str, org: str, workspace: str) -> dict:
    api = ApiClient(base_url, api_key=key)
    try:
        listed = api.list_environments(org, workspace)
    except RuntimeError as exc:
        return {"sent": f"dreadnode-sdk/{VERSION}", "error": str(exc), "class": type(exc).__name__}
    return {"sent": f"dreadnode-sdk/{VERSION}", "total": listed["total"]}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:5])))
