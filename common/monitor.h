/*
 * monitor: reading ZeroMQ socket-monitor events (zmq_socket_monitor), one
 * place for the two-part message format: the first part is the event
 * number (u16) and its value (u32: a socket descriptor for connection
 * events), in host order; the second is the endpoint, which nobody here
 * needs. Used by the broker (client and peer sockets) and libreferral.
 */
#ifndef REF_MONITOR_H
#define REF_MONITOR_H

#include <stdbool.h>
#include <stdint.h>

/* Read the next event waiting on the monitor's PAIR socket without
 * blocking. True with *event and *value set (0 when the first part was not
 * an event); false when none waits. */
bool monitor_next(void *monitor, uint16_t *event, uint32_t *value);

#endif
