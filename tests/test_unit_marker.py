"""The exit report at the end of the output stream (pure logic)."""

from worker.marker import START, ExitReport


def _report(nonce: str, status: int) -> bytes:
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
