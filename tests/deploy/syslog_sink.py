#!/usr/bin/env python3
"""syslog_sink.py SOCKET OUTFILE: a stand-in for the system logger in tests.

Binds a Unix datagram socket (e.g. /dev/log inside a private mount namespace)
and appends every message it receives, one per line, to OUTFILE until killed.
"""
import os
import socket
import sys

path, out = sys.argv[1], sys.argv[2]
if os.path.exists(path):
    os.unlink(path)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
os.chmod(path, 0o666)
with open(out, "ab", buffering=0) as f:
    f.write(b"")
    while True:
        data = s.recv(65536)
        f.write(data.rstrip(b"\0\n") + b"\n")
