"""A task environment's variables (shared/task_variables.py): service_urls in the SDK's shape,
template variables as the SDK's templating builds them (later sources win), rendering that keeps
unknown placeholders and never raises, command environments and model roles."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskenv.shared.errors import ErrorType, TaskenvError
from taskenv.shared.task_variables import (
    ENV_ENTRY_MAX_BYTES,
    command_env,
    env_name,
    model_variables,
    render_instruction,
    service_urls,
    template_variables,
)

URLS = service_urls({"web": [8080, 9090], "db": [5432], "idle": []})


def test_service_urls_have_the_sdk_shape_with_the_first_port_primary():
    assert URLS == {
        "web": {
            "url": "http://localhost:8080",
            "host": "localhost",
            "port": 8080,
            "urls": {"8080": "http://localhost:8080", "9090": "http://localhost:9090"},
        },
        "db": {
            "url": "http://localhost:5432",
            "host": "localhost",
            "port": 5432,
            "urls": {"5432": "http://localhost:5432"},
        },
    }


def test_template_variables_are_the_sdk_context():
    # What dreadnode's core/templating.py build_template_context_from_service_urls gives for URLS.
    assert template_variables(URLS, None, None) == {
        "web_url_8080": "http://localhost:8080",
        "web_host_8080": "localhost:8080",
        "web_port_8080": "8080",
        "web_url_9090": "http://localhost:9090",
        "web_host_9090": "localhost:9090",
        "web_port_9090": "9090",
        "web_url": "http://localhost:8080",
        "web_host": "localhost",
        "web_port": "8080",
        "db_url_5432": "http://localhost:5432",
        "db_host_5432": "localhost:5432",
        "db_port_5432": "5432",
        "db_url": "http://localhost:5432",
        "db_host": "localhost",
        "db_port": "5432",
    }


def test_provision_output_then_inputs_win_and_values_are_coerced_as_the_sdk_does():
    provided = {"web_url": "http://from-provision", "flag_path": "/tmp/flag", "n": 3}
    inputs = {"flag_path": "/given", "debug": True, "quiet": False, "missing": None, "ratio": 0.5, "xs": [1]}
    variables = template_variables(URLS, provided, inputs)
    assert variables["web_url"] == "http://from-provision"
    assert variables["flag_path"] == "/given"
    assert (variables["n"], variables["debug"], variables["quiet"]) == ("3", "true", "false")
    assert (variables["ratio"], variables["xs"]) == ("0.5", "[1]")
    assert "missing" not in variables  # None: the placeholder stays, as the SDK leaves it


def test_hostile_service_urls_are_skipped_not_raised():
    hostile = {"web": {"urls": {"x": "u", "81": 5}, "port": "nan"}, "bad": "not a dict", 3: {}}
    # As the SDK: the first numeric port key is the primary port, even without a usable URL.
    assert template_variables(hostile, None, None) == {"web_port": "81"}


def test_rendering_replaces_known_and_keeps_unknown_placeholders():
    template = "Open {{web_url}} ({{ web_port }}), read {{ flag }} and {{unknown}}; {{ not a var }} {web_url}"
    variables = template_variables(URLS, None, {"flag": "/flag"})
    assert render_instruction(template, variables) == (
        "Open http://localhost:8080 (8080), read /flag and {{unknown}}; {{ not a var }} {web_url}"
    )
    assert render_instruction("", variables) == ""


@given(st.text(max_size=300), st.dictionaries(st.from_regex(r"\w+", fullmatch=True), st.text(max_size=20)))
def test_rendering_never_raises_and_keeps_whatever_is_not_a_known_placeholder(template, variables):
    rendered = render_instruction(template, {})
    assert rendered == template
    render_instruction(template, variables)


@given(st.from_regex(r"[a-z]\w{0,10}", fullmatch=True), st.text(alphabet="{} x_", max_size=50))
def test_unknown_placeholders_survive_beside_known_ones(name, noise):
    template = f"{noise}{{{{ {name} }}}}{{{{ {name}_unknown }}}}{noise}"
    rendered = render_instruction(template, {name: "V"})
    assert f"{{{{ {name}_unknown }}}}" in rendered and "V" in rendered


def test_rendering_is_linear_on_unclosed_placeholders():
    template = "{{ " + "a" * 200_000 + " {{" * 50_000
    assert render_instruction(template, {"a": "x"}) == template


@pytest.mark.parametrize(
    ("variable", "name"),
    [
        ("web_url", "WEB_URL"),
        ("web-url.8080", "WEB_URL_8080"),
        ("8080_port", "_8080_PORT"),
        ("é", "É".replace("É", "_")),
        ("", ""),
    ],
)
def test_env_names(variable, name):
    assert env_name(variable) == name


def test_command_env_upper_cases_variables_then_models_then_secrets():
    variables = {"web_url": "http://localhost:8080", "model_judge": "from-template", "TOKEN": "template"}
    env = command_env(variables, {"TOKEN": "secret"}, {"MODEL_JUDGE": "gpt"})
    assert env == {"WEB_URL": "http://localhost:8080", "MODEL_JUDGE": "gpt", "TOKEN": "secret"}
    assert command_env({"": "x"}, {}, {}) == {}


@pytest.mark.parametrize("value", ["a\0b", "x" * ENV_ENTRY_MAX_BYTES])
def test_command_env_refuses_what_no_process_can_be_given_naming_not_showing_it(value):
    with pytest.raises(TaskenvError) as refused:
        command_env({"big_input": value}, {}, {})
    assert refused.value.type is ErrorType.VALIDATION
    assert "BIG_INPUT" in refused.value.detail and value not in refused.value.detail


def test_command_env_bounds_the_whole_environment():
    many = {f"v{i}": "x" * 100_000 for i in range(12)}
    with pytest.raises(TaskenvError, match="over"):
        command_env(many, {}, {})


MODELS = {"attacker": "openai/gpt-4o", "judge": {"model": "anthropic/claude", "overridable": False}, "bad": 3}


def test_model_roles_become_model_variables_with_overrides():
    assert model_variables(MODELS, None) == {
        "MODEL_ATTACKER": "openai/gpt-4o",
        "MODEL_JUDGE": "anthropic/claude",
    }
    assert model_variables(MODELS, {"attacker": " other/model "})["MODEL_ATTACKER"] == "other/model"
    assert model_variables(["openai/gpt-4o"], None) == {}  # a flat list scopes, names no role
    assert model_variables(None, {}) == {}


@pytest.mark.parametrize(
    ("models", "overrides", "kind"),
    [
        (MODELS, {"judge": "x/y"}, "not_overridable"),
        (MODELS, {"nope": "x/y"}, "unknown_role"),
        (MODELS, {"bad": "x/y"}, "unknown_role"),
        (["openai/gpt-4o"], {"attacker": "x/y"}, "unknown_role"),
        (None, {"attacker": "x/y"}, "unknown_role"),
        (MODELS, {"attacker": "has space"}, "invalid_model"),
        (MODELS, {"attacker": ""}, "invalid_model"),
        (MODELS, {"attacker": 3}, "invalid_model"),
    ],
)
def test_overrides_of_unknown_or_fixed_roles_are_422(models, overrides, kind):
    with pytest.raises(TaskenvError) as refused:
        model_variables(models, overrides)
    assert refused.value.type is ErrorType.VALIDATION
    assert refused.value.errors and refused.value.errors[0]["type"] == kind
    assert refused.value.errors[0]["loc"][:2] == ["body", "model_overrides"]
