# Shortcuts; scripts/test.sh is the one full test command (and what CI runs).
.PHONY: test test-compat

test:
	scripts/test.sh

# Only the Dreadnode compatibility suite: the real SDK and `dn` CLI (.venv-sdk) and the OpenAPI
# document against a live taskenv.
test-compat:
	scripts/install.sh
	scripts/sdk-venv.sh
	.venv/bin/pytest -q -ra -m compat
