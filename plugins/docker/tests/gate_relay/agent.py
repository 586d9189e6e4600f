# The agent's side of the gate's forwarder test (tests/gate_namespace.rs):
# run by the gate as PROGRAM, talking to tests/gate_relay/proxy.py through
# 127.0.0.1:3128. Prints one line per check passed; any failure raises.
#
#   agent.py relay GATE     many connections at once, both ways at once,
#                           one stalled, half-closes, one forwarder process,
#                           and fail closed once the proxy is gone
#   agent.py few-fds N      N connections open at once, more than the
#                           forwarder's descriptor limit allows: each is
#                           served in turn as others end
import hashlib, os, resource, socket, sys, threading, time

PORT = 3128


def connect(first_line):
    c = socket.create_connection(("127.0.0.1", PORT), timeout=60)
    c.sendall(first_line + b"\n")
    return c


def read_to_end(c):
    got = bytearray()
    while True:
        b = c.recv(65536)
        if not b:
            return bytes(got)
        got += b


def echo(data):
    """Sends `data` while reading its echo, then half-closes: all of it
    comes back, then the end."""
    c = connect(b"echo")
    sender = threading.Thread(target=lambda: (c.sendall(data), c.shutdown(socket.SHUT_WR)))
    sender.start()
    got = read_to_end(c)
    sender.join()
    c.close()
    return got == data


def processes_running(gate):
    """Processes whose program (or qemu's program) is the gate."""
    n = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if gate.encode() in argv[:2] and int(pid) != os.getpid():
            n += 1
    return n


def relay(gate):
    # A connection whose agent reads nothing yet while the proxy sends it
    # 8 MiB: it fills up, and must stop no other connection.
    stalled = connect(b"flood %d" % (8 << 20))
    time.sleep(0.3)

    # Many connections at once, each both ways at once, with random bytes.
    sizes = [1 << 22] + [(i * 7919) % (256 << 10) + 1 for i in range(63)]
    results = [None] * len(sizes)

    def run(i):
        results[i] = echo(os.urandom(sizes[i]))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(sizes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results), results
    print(f"echoed {len(sizes)} connections at once, one stalled")

    # The stalled one, read at last: every byte, in order.
    got = read_to_end(stalled)
    want = hashlib.sha256(bytes(i % 251 for i in range(len(got)))).hexdigest()
    assert len(got) == 8 << 20 and hashlib.sha256(got).hexdigest() == want, len(got)
    print("the stalled connection got all 8 MiB")

    # One process serves them all: 50 open connections, one forwarder.
    idle = [connect(b"echo") for _ in range(50)]
    for c in idle:
        c.sendall(b"x")
        assert c.recv(1) == b"x"
    n = processes_running(gate)
    assert n == 1, f"{n} processes run the gate with 50 connections open"
    print("one forwarder process for 50 connections")
    for c in idle:
        c.close()

    # The proxy gone: a new connection is closed (fail closed), not held.
    q = connect(b"quit")
    assert read_to_end(q) == b"bye\n"
    c = socket.create_connection(("127.0.0.1", PORT), timeout=10)
    try:
        end = c.recv(1)
    except ConnectionResetError:
        end = b""
    assert end == b"", end
    print("closed once the proxy is gone")


def few_fds(n):
    # The forwarder's descriptors run out before these are all relayed:
    # the rest wait (in the listener's backlog, or for a socket to the
    # proxy) and are served as earlier ones end. This process may use more
    # than the forwarder: its soft limit was lowered for the gate only.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    conns = [connect(b"echo") for _ in range(n)]
    for i, c in enumerate(conns):
        msg = b"hello %d" % i
        c.sendall(msg)
        c.shutdown(socket.SHUT_WR)
        assert read_to_end(c) == msg, i
        c.close()
    print(f"served {n} connections in turn")


if sys.argv[1] == "relay":
    relay(sys.argv[2])
else:
    few_fds(int(sys.argv[2]))
