/*
 * loop: referrald's event loop (loop.c describes one turn).
 */
#ifndef REF_BROKER_LOOP_H
#define REF_BROKER_LOOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "broker.h"

/* Run the loop until *b->stop: loop_open(), loop_turn() until it returns
 * a code or *b->stop is set, loop_close(). Returns a BROKER_EXIT_* code. */
int loop_run(broker *b);

/* Start what the loop needs on an opened broker (broker_open): the
 * signature-check workers, the inbound ring, the client link and the
 * ROUTER's connection monitor. Returns BROKER_EXIT_OK, or
 * BROKER_EXIT_TRANSPORT (logged); call loop_close() either way. */
int loop_open(broker *b);

/* One turn (loop.c lists its steps): wait at most until the next deadline
 * (1 s at most, not at all while work waits) for frames, verdicts, ZAP
 * requests or disconnects, handle them, commit once, send. Returns -1 to
 * go on, or the BROKER_EXIT_* code to stop with (BROKER_EXIT_STORE after a
 * failed commit: nothing of that turn was sent). For unit tests that run
 * a broker without a thread; referrald runs it through loop_run(). */
int loop_turn(broker *b);

/* Stop the workers and free what loop_open() made. Safe after a failed
 * loop_open(). */
void loop_close(broker *b);

/* Queue a packed frame for rid, to be sent after the turn's commit (takes
 * ownership of data). False when out of memory (data is freed then). */
bool loop_queue_frame(broker *b, const uint8_t *rid, size_t rid_len, uint8_t *data, size_t len);

/* Return message id to its queue at the next turn (a frame that will not
 * be sent, a link that went down). */
void loop_return_later(broker *b, const uint8_t id[IDS_BYTES]);

#endif
