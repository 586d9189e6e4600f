# A stand-in for the egress proxy on a Unix socket, for the gate's
# forwarder (tests/gate_namespace.rs). Each connection's first line says
# what to do:
#   echo        send back every byte until the client's end, then close
#   flood N     send N bytes (the byte i is i % 251), then close
#   refuse N    the same, without reading what the client sends (a proxy
#               that refuses an upload: the client's writes then fail)
#   quit        remove the socket, answer "bye", exit
# A connection that ends before its first line (the gate's probe) is closed.
#
#   proxy.py PATH [BACKLOG ACCEPT_AFTER]   a listen backlog of BACKLOG
#                                          (default 64), and nothing accepted
#                                          for ACCEPT_AFTER seconds (a proxy
#                                          whose backlog fills)
import os, socket, sys, threading, time

path = sys.argv[1]
backlog, accept_after = (int(sys.argv[2]), float(sys.argv[3])) if len(sys.argv) > 3 else (64, 0)
listener = socket.socket(socket.AF_UNIX)
listener.bind(path)
listener.listen(backlog)
time.sleep(accept_after)
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
        elif cmd and cmd[0] in ("flood", "refuse"):
            left = int(cmd[1])
            while left:
                n = min(left, len(PATTERN))
                c.sendall(PATTERN[:n])
                left -= n
        elif cmd == ["quit"]:
            # The socket file goes, then the process (and the listener with
            # it); the main thread's accept is never interrupted.
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
