"""Schemathesis hooks for flashcart's contract test (native/cli/tests/cli/contract.rs).

The payment callback verifies a signature over the raw body before it reads anything, so
unsigned bodies would only ever test the signature check. Sign each callback request as the
payment provider does, over the exact bytes sent, when the generated request carries the
header at all: a request generated without it (a missing-header case) stays unsigned.
"""

import hashlib
import hmac
import os
import time

import schemathesis

SECRET = os.environ["FLASHCART_PSP_SECRET"].encode()
HEADER = "Flashcart-Signature"


def _sign(request):
    if HEADER in request.headers:
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        timestamp = str(int(time.time()))
        mac = hmac.new(SECRET, timestamp.encode() + b"." + body, hashlib.sha256)
        request.headers[HEADER] = f"t={timestamp},v1={mac.hexdigest()}"
    return request


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.operation.path == "/v1/payments/callback":
        kwargs["auth"] = _sign
