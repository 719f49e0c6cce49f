"""cap_receive_buffers (serve_app/http_limits.py) on real sockets: the listener, the connections it accepted, and
the ones it accepts later get the fixed SO_RCVBUF; sockets on other ports and the client side are left alone."""

import socket

from serve_app.http_limits import cap_receive_buffers

SIZE = 256 * 1024


def _rcvbuf(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def test_listener_and_accepted_connections_get_the_fixed_receive_buffer():
    unix_a, unix_b = socket.socketpair()  # other kinds of socket in the process are passed over
    listener, other = socket.socket(), socket.socket()
    listener.bind(("0.0.0.0", 0))  # bound to every address: matched by port
    other.bind(("127.0.0.1", 0))
    listener.listen()
    other.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    before_other, before_client = _rcvbuf(other), _rcvbuf(client)
    try:
        assert cap_receive_buffers(("127.0.0.1", port), SIZE) == 2
        assert _rcvbuf(listener) == _rcvbuf(accepted) == 2 * SIZE  # Linux doubles the value it is given
        later_client = socket.create_connection(("127.0.0.1", port))
        later, _ = listener.accept()
        assert _rcvbuf(later) == 2 * SIZE  # inherited from the listener
        assert _rcvbuf(other) == before_other and _rcvbuf(client) == before_client
        later.close()
        later_client.close()
    finally:
        for s in (listener, other, client, accepted, unix_a, unix_b):
            s.close()
