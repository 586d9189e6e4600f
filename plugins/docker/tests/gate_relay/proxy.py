# A stand-in for the egress proxy on a Unix socket, for the gate's
# forwarder (tests/gate_namespace.rs). Each connection's first line says
# what to do:
#   echo        send back every byte until the client's end, then close
#   flood N     send N bytes (the byte i is i % 251), then close
#   quit        close the listener, remove the socket, answer "bye", exit
# A connection that ends before its first line (the gate's probe) is closed.
import os, socket, sys, threading, time

path = sys.argv[1]
time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 0)
listener = socket.socket(socket.AF_UNIX)
listener.bind(path)
listener.listen(64)
PATTERN = bytes(i % 251 for i in range(251 * 64))


def first_line(c):
    line = b""
    while not line.endswith(b"\n"):
        b = c.recv(1)
        if not b:
            return None
        line += b
    return line.decode().split()


def serve(c):
    try:
        cmd = first_line(c)
        if cmd == ["echo"]:
            while True:
                b = c.recv(65536)
                if not b:
                    break
                c.sendall(b)
        elif cmd and cmd[0] == "flood":
            left = int(cmd[1])
            while left:
                n = min(left, len(PATTERN))
                c.sendall(PATTERN[:n])
                left -= n
        elif cmd == ["quit"]:
            listener.close()
            os.unlink(path)
            c.sendall(b"bye\n")
            c.close()
            os._exit(0)
    except OSError:
        pass
    c.close()


while True:
    c, _ = listener.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
