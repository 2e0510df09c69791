"""A TCP server on loopback that accepts connections and never answers
(a shared cache tier that hangs). Prints "PORT n" first, like the others."""
import socket

s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(1024)
print("PORT %d" % s.getsockname()[1], flush=True)
held = []
while True:
    conn, _ = s.accept()
    held.append(conn)  # never read from, never answered, never closed
