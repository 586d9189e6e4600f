# The agent's side of the gate's forwarder test (tests/gate_namespace.rs):
# run by the gate as PROGRAM, talking to tests/gate_relay/proxy.py through
# 127.0.0.1:3128. Prints one line per check passed; any failure raises.
#
#   agent.py relay GATE     many connections at once, both ways at once,
#                           one stalled, half-closes, one forwarder process,
#                           and fail closed once the proxy is gone
#   agent.py limits GATE    with the forwarder's descriptors limited to 15,
#                           30 connections open at once: it waits without
#                           spinning, then serves each in turn as others end
#   agent.py burst GATE     14 connections at once, the forwarder limited to
#                           14 descriptors, and a proxy whose backlog is full
#                           for 2 s: all served, and a later one too
#   agent.py waiting GATE   200 connections waiting for a proxy whose backlog
#                           is full for 2 s: the forwarder idles meanwhile,
#                           then all are served
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


def gate_processes(gate):
    """Processes whose program (or qemu's program) is the gate."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if gate.encode() in argv[:2] and int(pid) != os.getpid():
            pids.append(int(pid))
    return pids


def limit_forwarder(gate, n):
    """Limits the forwarder (the one process running the gate) to n
    descriptors, soft and hard: it raises its soft limit to the hard one
    when it starts. This process may use more."""
    [pid] = gate_processes(gate)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (n, n))
    raise_own_limit()
    return pid


def raise_own_limit():
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_waiting(pid, n, most):
    """Opens n echo connections that must wait, and checks that the
    forwarder (pid) spends less than `most` seconds of CPU in a second
    of their waiting."""
    conns = [connect(b"echo") for _ in range(n)]
    time.sleep(0.2)
    before = cpu_seconds(pid)
    time.sleep(1)
    spent = cpu_seconds(pid) - before
    assert spent < most, f"the forwarder spent {spent:.2f} s of CPU in 1 s, waiting"
    return conns


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
    n = len(gate_processes(gate))
    assert n == 1, f"{n} processes run the gate with 50 connections open"
    print("one forwarder process for 50 connections")
    for c in idle:
        c.close()

    # Urgent (TCP out-of-band) data stops a read short of what is queued:
    # the bytes after it still come (the urgent byte itself is not relayed).
    # Read before the half-close: the end would make the forwarder read on.
    c = connect(b"echo")
    c.sendall(b"AAAA")
    c.send(b"X", socket.MSG_OOB)
    c.sendall(b"BBBB")
    c.settimeout(5)
    got = b""
    try:
        while len(got) < 8:
            got += c.recv(100)
    except socket.timeout:
        pass
    assert got == b"AAAABBBB", got
    c.close()
    print("bytes after urgent data came through")

    # A proxy that answers and closes while the agent still uploads (a
    # refused upload): the whole answer reaches the agent, which reads it
    # once its upload is done (or failed), as HTTP clients do.
    c = connect(b"refuse %d" % (3 << 20))
    try:
        for _ in range(200):
            c.sendall(b"u" * (256 << 10))
    except OSError:
        pass
    got = read_to_end(c)
    want = bytes(i % 251 for i in range(3 << 20))
    assert got == want, f"{len(got)} of {len(want)} bytes"
    c.close()
    print("the answer to a refused upload came whole")

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


def echo_in_turn(conns):
    for i, c in enumerate(conns):
        msg = b"hello %d" % i
        c.sendall(msg)
        c.shutdown(socket.SHUT_WR)
        assert read_to_end(c) == msg, i
        c.close()


def limits(gate):
    # 15 descriptors: room for 6 connections and a spare socket. The rest
    # wait in the backlog, and the forwarder waits for a slot without
    # spinning (before, it spent the whole second in accept4's EMFILE).
    echo_in_turn(open_waiting(limit_forwarder(gate, 15), 30, 0.3))
    print("served 30 connections in turn, idle while they waited")


def burst(gate):
    # Every descriptor taken by connections whose proxy side waits for the
    # proxy's backlog: each already holds both its sockets, so none is
    # stuck when the proxy catches up (before, all 14 were).
    limit_forwarder(gate, 14)
    conns = [None] * 14
    def open_one(i):
        conns[i] = socket.create_connection(("127.0.0.1", PORT), timeout=20)
    threads = [threading.Thread(target=open_one, args=(i,)) for i in range(14)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, c in enumerate(conns):
        c.sendall(b"echo\nhello %d" % i)
        c.shutdown(socket.SHUT_WR)
    for i, c in enumerate(conns):
        assert read_to_end(c) == b"hello %d" % i, i
        c.close()
    c = connect(b"echo")
    c.sendall(b"later")
    c.shutdown(socket.SHUT_WR)
    assert read_to_end(c) == b"later"
    print("served a burst while the proxy's backlog was full, and one later")


def waiting(gate):
    # Each waiting connection retried every turn of the loop made the
    # forwarder busy (0.27 s of CPU per second with 200 waiting); now only
    # the oldest tries, every 2 ms.
    raise_own_limit()
    [pid] = gate_processes(gate)
    echo_in_turn(open_waiting(pid, 200, 0.1))
    print("200 connections waited for the proxy's backlog, idle, then were served")


{"relay": relay, "limits": limits, "burst": burst, "waiting": waiting}[sys.argv[1]](sys.argv[2])
