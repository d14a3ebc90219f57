/*
 * route: where a message goes from this broker, decided in one place.
 *
 * The directory says which broker is home to each agency; the
 * configuration names this broker's peers and, for brokers that are not
 * peers, the peer to go through ([routes], then [routes] default). A
 * message for an agency homed here is LOCAL (its queue); for an agency
 * homed elsewhere it goes to the next hop, a peer (PEER); without a route it
 * is refused (NONE) with a sentence naming what is missing, never accepted
 * and stranded.
 */
#ifndef REF_BROKER_ROUTE_H
#define REF_BROKER_ROUTE_H

#include <stddef.h>

#include "config.h"
#include "directory.h"
#include "ids.h"

typedef enum {
    ROUTE_LOCAL,      /* the agency is homed at this broker */
    ROUTE_PEER,       /* next_hop is the peer to forward to */
    ROUTE_NONE,       /* no way there: why says what is missing */
} route_kind;

/* Where a message for agency goes. next_hop (IDS_NAME_MAX + 1) is set for
 * ROUTE_PEER; why (why_len) for ROUTE_NONE. */
route_kind route_agency(const config *cfg, const directory *dir, const char *agency,
                        char next_hop[IDS_NAME_MAX + 1], char *why, size_t why_len);

/* The peer to go through towards broker (never this broker), or NULL. */
const char *route_broker(const config *cfg, const char *broker);

#endif
