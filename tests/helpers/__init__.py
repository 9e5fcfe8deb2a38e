"""What the tests share and run in child processes: peers (servers and clients of packet-ipc), crashers (hostile
peers, crash and limit scenarios), soak (the soak run), nats_cluster (a real 3-node JetStream cluster)."""
