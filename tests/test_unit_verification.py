"""shared/verification.py: a task's verification as the check run in the sandbox, the verdict on
what the sandbox answers, and the shape the SDK's verify_env_state consumes."""

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskenv.shared import verification
from taskenv.shared.errors import ErrorType, TaskenvError
from taskenv.shared.models import EXEC_TIMEOUT_MAX_SEC
from taskenv.shared.verification import (
    FLAG_MAX_BYTES,
    OUTPUT_MAX_CHARS,
    FlagCheck,
    Outcome,
    ScriptCheck,
    check_flag,
    judge,
    parse,
    task_verification,
)

FLAG = "FLAG{x}"
SHA256 = hashlib.sha256(FLAG.encode()).hexdigest()
BY_VALUE = {"method": "flag", "path": "/tmp/flag", "value": FLAG, "timeout": 30, "where": "environment"}
BY_HASH = {"method": "flag", "path": "/tmp/flag", "hash": SHA256}
SCRIPT = {"method": "script", "script": "verify.sh", "timeout": 45}
JUDGE = {"model": "openai/gpt-4o", "rubric": "rce"}


@pytest.mark.parametrize(
    "hash_",
    [
        SHA256,
        SHA256.upper(),
        f"sha256:{SHA256}",
        f"SHA512:{hashlib.sha512(FLAG.encode()).hexdigest()}",
        f"sha1:{hashlib.sha1(FLAG.encode()).hexdigest()}",
        f"md5:{hashlib.md5(FLAG.encode()).hexdigest()}",
    ],
)
def test_a_flag_matches_by_every_hash_form(hash_):
    flagged = {**BY_HASH, "hash": hash_}
    assert check_flag(f"  {FLAG}\n", flagged).passed
    wrong = check_flag("FLAG{y}", flagged)
    assert not wrong.passed and wrong.outcome is Outcome.MISMATCH


def test_a_flag_matches_its_value_after_stripping_both_sides():
    assert check_flag(f"\n{FLAG}  \n", BY_VALUE).passed
    assert check_flag(FLAG, {**BY_VALUE, "value": f" {FLAG}\n"}).passed
    for content in ("", "FLAG{x}x", "flag{x}", "FLAG{ x}"):
        verdict = check_flag(content, BY_VALUE)
        assert not verdict.passed and verdict.detail.startswith("mismatch: ")
        assert FLAG not in verdict.detail  # the expected value is never told


@given(st.text(max_size=300))
def test_check_flag_never_raises_for_any_content(content):
    for flagged in (BY_VALUE, BY_HASH, {**BY_HASH, "hash": "md5:" + "0" * 32}):
        verdict = check_flag(content, flagged)
        assert verdict.passed == (content.strip() == FLAG) or flagged["hash"].startswith("md5")


@given(st.text(max_size=200), st.text(min_size=1, max_size=50).filter(lambda v: v.strip()))
def test_a_value_matches_exactly_what_strips_to_it(content, value):
    verdict = check_flag(content, {**BY_VALUE, "value": value})
    assert verdict.passed == (content.strip() == value.strip())


def test_the_check_of_each_method():
    assert parse(BY_VALUE) == FlagCheck(path="/tmp/flag", value=FLAG)
    assert parse({**BY_HASH, "hash": SHA256.upper()}) == FlagCheck(path="/tmp/flag", hex=SHA256)
    assert parse(SCRIPT) == ScriptCheck(script="verify.sh", timeout_sec=45)
    # The method is inferred from the fields, as the manifest's validator does.
    assert parse({"script": "checks/v.sh"}) == ScriptCheck(script="checks/v.sh", timeout_sec=30)


def test_commands_quote_what_the_task_names():
    flag = parse({**BY_VALUE, "path": "/tmp/my flag; rm -rf /"})
    assert flag.command == f"head -c {FLAG_MAX_BYTES + 1} -- '/tmp/my flag; rm -rf /'"
    assert parse(SCRIPT).command == "sh /home/user/task/verify.sh"
    assert verification.script_command("./a b/../v.sh") == "sh /home/user/task/v.sh"
    assert verification.script_command("my checks/v.sh") == "sh '/home/user/task/my checks/v.sh'"
    assert verification.script_command("../../etc/x") == "sh /home/user/task/etc/x"


@pytest.mark.parametrize(("timeout", "bounded"), [(0, 1), (-5, 1), (45, 45), (10**9, EXEC_TIMEOUT_MAX_SEC)])
def test_a_script_timeout_is_held_within_a_command_s(timeout, bounded):
    assert parse({**SCRIPT, "timeout": timeout}).timeout_sec == bounded


@pytest.mark.parametrize("stored", [None, {}])
def test_a_task_without_verification_is_a_conflict(stored):
    with pytest.raises(TaskenvError) as caught:
        parse(stored, "'lab@1.0.0'")
    assert caught.value.type is ErrorType.CONFLICT
    assert "'lab@1.0.0' declares no verification" in caught.value.detail


@pytest.mark.parametrize(
    "stored",
    [
        {"method": "outcome_judge", "judge": JUDGE},
        {"method": "script_and_judge", "script": "v.sh", "judge": JUDGE},
        {"method": "flag_and_judge", "path": "/tmp/f", "value": "x", "judge": JUDGE},
    ],
)
def test_judge_methods_are_unsupported_naming_the_method(stored):
    with pytest.raises(TaskenvError) as caught:
        parse(stored)
    assert caught.value.type is ErrorType.VALIDATION
    assert caught.value.detail.startswith(f"unsupported: verification method {stored['method']!r}")


def test_a_stored_verification_that_no_longer_validates_is_a_conflict():
    with pytest.raises(TaskenvError) as caught:
        parse({"method": "flag", "path": "/tmp/f"})  # neither value nor hash
    assert caught.value.type is ErrorType.CONFLICT and "invalid verification" in caught.value.detail


def test_verdicts_on_what_the_sandbox_answered():
    flag, script = parse(BY_VALUE), parse(SCRIPT)
    assert judge(flag, 0, FLAG + "\n").outcome is Outcome.MATCHED
    unreadable = judge(flag, 1, "head: /tmp/flag: No such file or directory\n")
    assert not unreadable.passed and unreadable.outcome is Outcome.FLAG_UNREADABLE
    too_large = judge(flag, 0, FLAG + " " * FLAG_MAX_BYTES)
    assert not too_large.passed and too_large.outcome is Outcome.FLAG_TOO_LARGE
    assert judge(script, 0, "").outcome is Outcome.SCRIPT_PASSED
    failed = judge(script, 3, "nope")
    assert not failed.passed and failed.detail == "script_failed: verify.sh exited 3"
    assert verification.timed_out(script).outcome is Outcome.SCRIPT_TIMEOUT
    assert verification.timed_out(flag).outcome is Outcome.FLAG_UNREADABLE


def test_outputs_are_bounded_keeping_a_flag_s_head_and_a_script_s_tail():
    long = "a" * OUTPUT_MAX_CHARS + "TAIL"
    assert verification.bounded_output(parse(SCRIPT), long).endswith("TAIL")
    head = verification.bounded_output(parse(BY_VALUE), "HEAD" + long)
    assert head.startswith("HEAD") and "TAIL" not in head
    assert len(head) < OUTPUT_MAX_CHARS + 100
    assert verification.bounded_output(parse(SCRIPT), "short") == "short"


def test_the_sdk_shapes():
    assert task_verification(None) is None
    assert task_verification(BY_VALUE) == {
        "method": "env_flag",
        "flag_path": "/tmp/flag",
        "expected": FLAG,
        "timeout_sec": verification.FLAG_READ_TIMEOUT_SEC,
    }
    # The SDK compares `sha256:<its hexdigest>` as text: lower case, prefixed.
    assert task_verification({**BY_HASH, "hash": SHA256.upper()})["hash"] == f"sha256:{SHA256}"
    sha1 = hashlib.sha1(FLAG.encode()).hexdigest()
    assert task_verification({**BY_HASH, "hash": f"sha1:{sha1}"})["hash"] == f"sha1:{sha1}"
    assert task_verification(SCRIPT) == {
        "method": "env_script",
        "script_path": "sh /home/user/task/verify.sh",
        "expected_exit_code": 0,
        "timeout_sec": 45,
    }
    judged = task_verification({"method": "outcome_judge", "judge": {**JUDGE, "system_prompt": "be fair"}})
    assert judged is not None
    assert judged["method"] == "llm_judge"
    assert (judged["model"], judged["rubric"], judged["system_prompt"]) == ("openai/gpt-4o", "rce", "be fair")
    assert task_verification({"method": "flag", "path": "/tmp/f"}) is None  # invalid: no shape
