"""The padding rule, in the independent Python implementation
(test/integration/harness.py) and against the C one.

1. C and Python agree on the padded size of every plaintext length from 0
   to the largest bucket + 16: pad-table (a small C program printing
   seal_padded_size() as runs) against harness.padded_size().
2. Every length up to harness.MAX_PLAINTEXT has a bucket (no holes), and
   none above it.
3. Python seals and opens every length of the same ranges the C property
   test uses (test_crypto.c, seal_ranges): every length up to 70,000 and
   around the larger buckets' edges and holes; the opened bytes are the
   plaintext and one padding field ending on the bucket.

Usage: test_padding.py PAD_TABLE_PROGRAM"""

import hashlib
import os
import subprocess
import sys
import time

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

import harness as h
from harness import pb

SEAL_RANGES = [(0, 70000), (262144 - 16387 - 64, 262144 - 16387 + 64),
               (262144 - 130 - 64, 262144 + 64), (h.MAX_PLAINTEXT - 200, h.MAX_PLAINTEXT)]


def c_table(program):
    out = subprocess.run([program], check=True, capture_output=True, text=True).stdout
    table = {}
    for line in out.splitlines():
        first, last, padded = (int(x) for x in line.split())
        for n in range(first, last + 1):
            table[n] = padded or None
    return table


def c_and_python_agree_on_every_length(program):
    table = c_table(program)
    top = h.BUCKETS[-1] + 16
    assert sorted(table) == list(range(top + 1)), "pad-table does not cover every length"
    for n in range(top + 1):
        assert table[n] == h.padded_size(n), (n, table[n], h.padded_size(n))
    assert all(h.padded_size(n) is not None for n in range(h.MAX_PLAINTEXT + 1))
    assert h.MAX_PLAINTEXT == 770044
    assert h.padded_size(770045) is None and h.padded_size(894) == 4096
    assert h.padded_size(49149) == 262144 and h.padded_size(262141) == 786432
    print(f"C and Python agree on {top + 1} lengths")


def every_length_around_every_bucket_seals_and_opens():
    key = X25519PrivateKey.generate()
    public = key.public_key().public_bytes(serialization.Encoding.Raw,
                                           serialization.PublicFormat.Raw)
    digest = hashlib.sha256(b"property").digest()
    source = bytes((i * 131 + 7) & 0xFF for i in range(h.MAX_PLAINTEXT))
    count = 0
    for first, last in SEAL_RANGES:
        for n in range(first, last + 1):
            plain = source[:n]
            padded = h.pad_plaintext(plain)
            bucket = h.padded_size(n)
            assert len(padded) == bucket, (n, len(padded), bucket)
            sealed = h.seal(padded, digest, [("qd.police", public)])
            assert len(sealed) == h.sealed_size(bucket, [("qd.police", public)])
            opened = h.open_padded(sealed, digest, "qd.police", key, public)
            assert opened == padded
            # The tail is exactly one canonical padding field.
            tail = pb.BodyPlaintext()
            tail.ParseFromString(opened[n:])
            assert tail.SerializeToString() == opened[n:] and len(tail.padding) >= 1, n
            assert tail.padding == bytes(len(tail.padding))
            count += 1
    try:
        h.pad_plaintext(bytes(h.MAX_PLAINTEXT + 1))
        raise AssertionError("a plaintext over MAX_PLAINTEXT was padded")
    except ValueError:
        pass
    print(f"sealed and opened {count} lengths")


if __name__ == "__main__":
    started = time.monotonic()
    c_and_python_agree_on_every_length(sys.argv[1])
    every_length_around_every_bucket_seals_and_opens()
    print(f"{time.monotonic() - started:.1f} s")
