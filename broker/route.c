/*
 * route: next-hop decisions (route.h). Pure functions of the configuration
 * and the directory: no state, no store.
 */
#include "route.h"

#include <stdio.h>
#include <string.h>

const char *route_broker(const config *cfg, const char *broker)
{
    if (config_peer_find(cfg, broker) != NULL)
        return config_peer_find(cfg, broker)->id;   /* a direct link */
    for (size_t i = 0; i < cfg->n_routes; i++)
        if (strcmp(cfg->routes[i].to, broker) == 0)
            return cfg->routes[i].via;
    return cfg->default_route[0] != '\0' ? cfg->default_route : NULL;
}

route_kind route_agency(const config *cfg, const directory *dir, const char *agency,
                        char next_hop[IDS_NAME_MAX + 1], char *why, size_t why_len)
{
    const Referral__V1__DirectoryAgency *a = directory_agency(dir, agency);
    if (a == NULL) {
        snprintf(why, why_len, "recipient %s is not in the directory", agency);
        return ROUTE_NONE;
    }
    if (strcmp(a->home_broker, cfg->id) == 0)
        return ROUTE_LOCAL;
    if (directory_broker(dir, a->home_broker) == NULL) {
        snprintf(why, why_len, "recipient %s is homed at broker %s, which the directory does "
                 "not list; fix the directory", agency, a->home_broker);
        return ROUTE_NONE;
    }
    const char *via = route_broker(cfg, a->home_broker);
    if (via == NULL) {
        snprintf(why, why_len, "no route from broker %s to broker %s (home of %s): add it to "
                 "[peers] or [routes] in the configuration", cfg->id, a->home_broker, agency);
        return ROUTE_NONE;
    }
    snprintf(next_hop, IDS_NAME_MAX + 1, "%s", via);
    return ROUTE_PEER;
}
