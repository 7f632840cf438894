"""uvicorn's HTTP protocol, answering requests it cannot even parse with taskenv's envelope.

A header value with control characters (a token with a stray `\\x01`), a broken request line and
the like are refused by the HTTP parser before the application sees them; uvicorn answers those
with a plain-text 400. Here the same 400 carries the canonical envelope, like every other error.
"""

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from shared.errors import ErrorType, TaskenvError


class EnvelopeHttpToolsProtocol(HttpToolsProtocol):
    def send_400_response(self, msg: str) -> None:
        detail = "Malformed HTTP request: the request line or a header is not valid HTTP"
        error = TaskenvError(ErrorType.INVALID_REQUEST, detail)
        body = json.dumps(error.envelope()).encode()
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()
