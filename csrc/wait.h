/*
 * wait.h - blocking without system calls on the fast path: spin briefly, then sleep on an eventfd that the
 * peer writes only when our waiting flag is set (see the arm/disarm pairs in ring.h). The control socket is
 * polled beside the eventfd: its hang-up is how a dead peer is noticed.
 */
#ifndef PIPC_WAIT_H
#define PIPC_WAIT_H

#include <stdint.h>

#define PIPC_WAIT_EVENT 0  /* the eventfd fired (or spurious): re-check the ring */
#define PIPC_WAIT_PEER 1   /* the control socket hung up or has data: the peer is gone or misbehaving */

/* CLOCK_MONOTONIC now, in ns (vDSO: no system call). */
uint64_t pipc_now_ns(void);
/* Deadline for a timeout in ms (negative: none, returned as UINT64_MAX). */
uint64_t pipc_deadline(int timeout_ms);
/* Milliseconds left until deadline_ns, rounded up, for poll(2): -1 for no deadline (UINT64_MAX), 0 once it has
 * passed, at most 10^9. The one place a deadline becomes a poll timeout. */
int pipc_remaining_ms(uint64_t deadline_ns);
/* Sleeps until evfd is readable, sock signals, or the deadline passes. Returns PIPC_WAIT_EVENT,
 * PIPC_WAIT_PEER, -ETIMEDOUT or -EINTR. Drains the eventfd's counter. */
int pipc_wait(int evfd, int sock, uint64_t deadline_ns);
/* Wakes a peer sleeping in pipc_wait on evfd. */
void pipc_wake(int evfd);
/* 1 if the peer on this SOCK_SEQPACKET socket has gone (EOF or error), without blocking. */
int pipc_peer_gone(int sock);

#endif
