"""The subcommands of ``packet-ipc``, one module each (``replay``, ``capture``, ``dump``, ``stats``, ``demo``,
``config``/``bench`` in ``tools``), and ``common`` for what they share. Each module has ``add_parser(sub)``
registering its arguments and a ``cmd_*`` function running it; :mod:`packet_ipc.cli` only assembles them."""
