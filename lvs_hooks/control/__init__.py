"""The authenticated control channel between directors: lvs-hooks' own small messages (push
begin/end/request, status request/reply), one UDP datagram each on the sync group and interface,
HMAC-SHA256 under a shared key and refused when stale or replayed.

`message` is the pure part (format, authentication, replay guard, key file); `channel` is the
socket.
"""
