/*
 * loop: referrald's event loop (loop.c describes one turn).
 */
#ifndef REF_BROKER_LOOP_H
#define REF_BROKER_LOOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "broker.h"

/* Run the loop until *b->stop. Returns a BROKER_EXIT_* code. */
int loop_run(broker *b);

/* Queue a packed frame for rid, to be sent after the turn's commit (takes
 * ownership of data). False when out of memory (data is freed then). */
bool loop_queue_frame(broker *b, const uint8_t *rid, size_t rid_len, uint8_t *data, size_t len);

#endif
