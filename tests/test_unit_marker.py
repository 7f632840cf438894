"""The exit report at the end of the output stream (pure logic)."""

import itertools
import re

from hypothesis import given
from hypothesis import strategies as st

from taskenv.worker.exit_report import START, ExitReport, parse_status


def _report(nonce: str, status: int | str) -> bytes:
    return START + nonce.encode() + b":" + str(status).encode() + b"\n"


def test_report_after_output_in_one_chunk():
    scan = ExitReport("abc")
    assert scan.feed(b"out\nerr\n" + _report("abc", 3)) == b"out\nerr\n"
    assert scan.status == 3


def test_report_split_at_every_byte():
    stream = b"no newline at the end" + _report("n0nce", 127) + b"late output of a background child"
    for cut in range(1, len(stream)):
        scan, out = ExitReport("n0nce"), b""
        for chunk in (stream[:cut], stream[cut:]):
            if scan.status is None:
                out += scan.feed(chunk)
        assert (out, scan.status) == (b"no newline at the end", 127), cut


def test_byte_by_byte():
    scan, out = ExitReport("z"), b""
    for byte in b"a\x1eb" + _report("z", 0):
        out += scan.feed(bytes([byte]))
    assert (out, scan.status) == (b"a\x1eb", 0)


def test_another_nonce_or_a_malformed_report_is_output():
    scan = ExitReport("right")
    text = _report("wrong", 1) + START + b"right:x\n" + b"tail"
    out = scan.feed(text)
    assert scan.status is None
    assert out + scan.rest() == text


def test_the_end_of_a_stream_without_report_keeps_everything():
    scan = ExitReport("abc")
    out = scan.feed(b"partial \x1eab")
    assert out + scan.rest() == b"partial \x1eab" and scan.status is None


def test_only_what_the_shells_status_can_be_is_a_status():
    assert [parse_status(str(n).encode()) for n in (0, 7, 42, 255)] == [0, 7, 42, 255]
    huge = (b"18446744073709551616", b"9" * 4400)
    for forged in (b"256", b"999", b"1000", *huge, b"007", b"00", b"-1", b"+1"):
        assert parse_status(forged) is None, forged
    for not_digits in (b"", b" 1", b"1 ", b"\xd9\xa1", b"\xef\xbc\x91", b"1_0"):
        assert parse_status(not_digits) is None, not_digits


def test_forged_reports_that_are_no_status_stay_output_and_the_real_one_counts():
    nonce = "a1" * 12
    forged = [_report(nonce, s) for s in ("18446744073709551616", "256", "9" * 4400, "0123", "")]
    stream = b"".join(forged) + b"after\n" + _report(nonce, 7)
    scan = ExitReport(nonce)
    assert (scan.feed(stream), scan.status) == (b"".join(forged) + b"after\n", 7)


def test_thousands_of_malformed_reports_in_one_chunk():
    nonce = "b2" * 12
    stream = (START + nonce.encode() + b":\n") * 50_000
    scan = ExitReport(nonce)
    assert scan.feed(stream) + scan.rest() == stream and scan.status is None


def test_a_flood_after_a_reports_prefix_is_not_held_back():
    nonce = "c3" * 12
    scan = ExitReport(nonce)
    assert scan.feed(START + nonce.encode() + b":") == b""
    assert scan.held == scan.max_length - 4
    out = scan.feed(b"0" * 65536)
    assert out == START + nonce.encode() + b":" + b"0" * 65536 and scan.held == 0
    for _ in range(1000):
        assert scan.feed(b"0" * 65536) == b"0" * 65536 and scan.held == 0


NONCE = "d4" * 12
PREFIX = START + NONCE.encode() + b":"
# The oracle: the first report whose status is 0-255 in plain decimal.
REPORT = re.compile(re.escape(PREFIX) + rb"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])\n")
PIECES = st.one_of(
    st.binary(max_size=12),
    st.sampled_from([PREFIX, PREFIX[:1], PREFIX[:9], PREFIX[:-1], START, b"\n", b"0", b"00", b"25", b"255"]),
    st.sampled_from([b"256", b"1000", b"18446744073709551616", b"7\n", b"1" * 40, START + b"x" * 24 + b":"]),
    st.sampled_from([PREFIX + s + b"\n" for s in (b"256", b"007", b"255", b"0", b"")]),
)


@given(st.lists(PIECES, max_size=40).map(b"".join), st.lists(st.integers(min_value=0, max_value=400)))
def test_any_bytes_in_any_chunking_give_the_output_back_and_at_most_one_status(stream, cuts):
    expected = REPORT.search(stream)
    scan, out = ExitReport(NONCE), b""
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    for start, end in itertools.pairwise(bounds):
        out += scan.feed(stream[start:end])
        assert scan.held < scan.max_length
    if scan.status is None:
        out += scan.rest()
    if expected is None:
        assert (out, scan.status) == (stream, None)
    else:
        assert (out, scan.status) == (stream[: expected.start()], int(expected[1]))
        assert 0 <= scan.status <= 255
