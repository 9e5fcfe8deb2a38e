"""packet-ipc benchmarks: packet-ipc and its peers side by side, in one run, on the same packets.

Run ``python -m benchmarks --help``. Peers: ``multiprocessing.Pipe`` and ``multiprocessing.Queue``,
pyzmq PUSH/PULL over ``ipc://``, faster-fifo and iceoryx2 publish-subscribe. Two modes: ``batch``
(columnar batches of 256 packets in, buffers out) and ``objects`` (Python packet objects in and out).
Every consumer hashes every byte it receives and the parent checks the digests; a mismatch is
reported as FAILED. Method and results: ``docs/performance.md``.
"""
