/* capture_internal.h - what capture_run.c needs from capture.c beyond the public ABI. */
#ifndef PIPC_CAPTURE_INTERNAL_H
#define PIPC_CAPTURE_INTERNAL_H

#include "packet_ipc.h"

/* 1 if the last pipc_capture_next returned -EINTR because of pipc_capture_breakloop() (not a signal); clears it. */
int pipc_capture_take_break(pipc_capture *cap);

/* The capture's snaplen (the least buffer pipc_capture_next accepts). */
uint32_t pipc_capture_snaplen_of(const pipc_capture *cap);

/* Sets the capture's linger_ms (see struct pipc_capture_options); returns the previous value. */
int pipc_capture_swap_linger(pipc_capture *cap, int linger_ms);

/* pipc_capture_next for pipc_capture_run: each packet is written straight into its worker's ring of `server`
 * (one copy, from libpcap's ring, flow distribution as pipc_server_send's), and only what cannot go there at
 * once (a full ring, a worker another thread is sending to, broadcast) is staged in out[]/buf, returned for
 * the caller to send with pipc_server_send_some. *direct_packets / *direct_bytes: what was written straight
 * (published and counted on its connection). Returns the staged count (0 when all went straight) or a negative
 * code (then nothing went straight). */
long pipc_capture_next_direct(pipc_capture *cap, pipc_server *server, struct pipc_packet *out, size_t max,
                              uint8_t *buf, size_t buf_bytes, int timeout_ms, uint64_t *direct_packets,
                              uint64_t *direct_bytes);

#endif
