"""packet-ipc benchmarks: packet-ipc and its peers side by side, in one run, on the same packets.

Run ``python -m benchmarks --help``. Peers: ``multiprocessing.Pipe`` and ``multiprocessing.Queue``,
pyzmq PUSH/PULL over ``ipc://``, faster-fifo and iceoryx2 publish-subscribe. Two modes: ``batch``
(columnar batches of 256 packets in, buffers out) and ``objects`` (Python packet objects in and out).
Every consumer hashes every byte it receives and the parent checks the digests; a mismatch is
reported as FAILED. Method and results: ``docs/performance.md``.
"""

import os

# numpy builds the workloads; its OpenBLAS would otherwise start a thread per core in every forked producer
# and consumer, which spins after use and takes CPU from whichever transport is measured (seen in profiles).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
