"""What inscale's HTTP protocol (`inscale.http.guarded_protocol`) adds to each request's ASGI
scope, for the data path to use when present (absent under any other ASGI server)."""

# `(scope, status, headers, body) -> bool`: a response in one write (`http.whole_response`).
WRITE_KEY = "inscale.write_whole"
# An `asyncio.Future` of the connection, done when the client's connection is lost.
GONE_KEY = "inscale.gone"
