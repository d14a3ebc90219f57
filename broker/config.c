/*
 * config: INI configuration for referrald (config.h). Parsing is inih's;
 * this file only maps keys to fields, with units and ranges. It must never
 * accept a key it does not know.
 */
#include "config.h"

#include <assert.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ini.h>

#include "metrics.h"

void config_defaults(config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    char why[200];
    bool is_done = policy_finish(&cfg->policies, why, sizeof why);   /* the built-in ones */
    assert(is_done);
    (void)is_done;
    cfg->log_level = LOGL_INFO;
    cfg->max_frame_bytes = 1u << 20;
    cfg->max_body_bytes = 800u << 10;   /* the largest sealed body (792,386 bytes) fits */
    cfg->max_batch = 256;
    cfg->verify_workers = 0;
    cfg->max_pending_checks = 1024;
    cfg->peer_window = 64;
    cfg->heartbeat_ms = 1000;
    cfg->peer_timeout_ms = 5000;
    cfg->stall_ms = 30000;
    cfg->max_turn_ms = 100;
    cfg->max_hold_ms = 5000;
    cfg->max_held_frames = 8192;
    cfg->max_sessions = 1024;
    cfg->max_sessions_per_agency = 16;
    cfg->max_credit = 1024;
    cfg->max_ttl_ms = 30ull * 24 * 3600 * 1000;
    cfg->clock_skew_ms = 24ull * 3600 * 1000;
    cfg->session_idle_ms = 120000;
    cfg->map_size_bytes = 1ull << 30;
    cfg->high_water_percent = 85;
    cfg->min_free_disk_bytes = 64ull << 20;
    cfg->ack_timeout_ms = 30000;
    cfg->max_nak_delay_ms = 3600000;
    cfg->notice_ttl_ms = 30ull * 24 * 3600 * 1000;
    cfg->max_deadlines_per_turn = 1024;
    cfg->body_grace_ms = 0;   /* docs/operations.md "Retention": why 0 */
    cfg->keep_ms = 183ull * 24 * 3600 * 1000;
    cfg->retention_max_per_turn = 256;
    cfg->sweep_interval_ms = 600000;
}

typedef struct {
    config *cfg;
    char *err;
    size_t err_len;
    bool has_error;
} parse_state;

static bool parse_u64(const char *v, uint64_t lo, uint64_t hi, uint64_t *out)
{
    char *end;
    errno = 0;
    if (v[0] == '-' || v[0] == '\0')
        return false;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno != 0 || *end != '\0' || x < lo || x > hi)
        return false;
    *out = x;
    return true;
}

static bool copy_text(const char *v, char *dst, size_t cap)
{
    size_t n = strlen(v);
    if (n == 0 || n >= cap)
        return false;
    memcpy(dst, v, n + 1);
    return true;
}

typedef enum { K_U32, K_U64, K_TEXT, K_ID, K_LEVEL, K_BOOL, K_LISTEN } key_type;

typedef struct {
    const char *section;
    const char *name;
    key_type type;
    size_t offset;
    size_t size;            /* K_TEXT capacity */
    uint64_t lo, hi;        /* numeric range */
    const char *hint;       /* what a valid value looks like */
} key_spec;

#define OFF(f) offsetof(config, f)
#define DAY_MS (24ull * 3600 * 1000)

static const key_spec keys[] = {
    {"broker", "id", K_ID, OFF(id), 0, 0, 0, "an id such as broker.qingdao"},
    {"broker", "listen", K_TEXT, OFF(listen), sizeof ((config *)0)->listen, 0, 0,
     "a ZeroMQ endpoint such as tcp://127.0.0.1:7400"},
    {"broker", "data_dir", K_TEXT, OFF(data_dir), sizeof ((config *)0)->data_dir, 0, 0,
     "a directory path"},
    {"broker", "log_level", K_LEVEL, OFF(log_level), 0, 0, 0, "error, warn, info or debug"},
    {"trust", "directory", K_TEXT, OFF(directory), sizeof ((config *)0)->directory, 0, 0,
     "the path of a signed directory (referralctl directory sign)"},
    {"trust", "trust_root", K_TEXT, OFF(trust_root), sizeof ((config *)0)->trust_root, 0, 0,
     "64 hex digits or the path of the root's .pub.json"},
    {"trust", "key_dir", K_TEXT, OFF(key_dir), sizeof ((config *)0)->key_dir, 0, 0,
     "the directory holding this broker's key files (referralctl keygen)"},
    {"limits", "max_frame_bytes", K_U32, OFF(max_frame_bytes), 0, 4096, 64u << 20, "4096..67108864"},
    {"limits", "max_body_bytes", K_U32, OFF(max_body_bytes), 0, 1024, 60u << 20, "1024..62914560"},
    {"limits", "max_batch", K_U32, OFF(max_batch), 0, 1, 65536, "1..65536"},
    {"limits", "verify_workers", K_U32, OFF(verify_workers), 0, 0, 64, "0..64 (0: auto)"},
    {"limits", "max_pending_checks", K_U32, OFF(max_pending_checks), 0, 1, 65536, "1..65536"},
    {"limits", "max_turn_ms", K_U32, OFF(max_turn_ms), 0, 10, 10000, "10..10000"},
    {"limits", "max_hold_ms", K_U32, OFF(max_hold_ms), 0, 100, 3600000, "100..3600000"},
    {"limits", "max_held_frames", K_U32, OFF(max_held_frames), 0, 16, 1000000, "16..1000000"},
    {"limits", "max_sessions", K_U32, OFF(max_sessions), 0, 1, 1000000, "1..1000000"},
    {"limits", "max_sessions_per_agency", K_U32, OFF(max_sessions_per_agency), 0, 1, 1000000,
     "1..1000000, at most max_sessions"},
    {"limits", "max_credit", K_U32, OFF(max_credit), 0, 1, 1000000, "1..1000000"},
    {"limits", "max_ttl_ms", K_U64, OFF(max_ttl_ms), 0, 1000, 365 * DAY_MS, "1000..31536000000"},
    {"limits", "clock_skew_ms", K_U64, OFF(clock_skew_ms), 0, 1000, 30 * DAY_MS, "1000..2592000000"},
    {"limits", "session_idle_ms", K_U64, OFF(session_idle_ms), 0, 1000, DAY_MS, "1000..86400000"},
    {"store", "map_size_bytes", K_U64, OFF(map_size_bytes), 0, 1u << 20, 1ull << 44, "1048576..17592186044416"},
    {"store", "high_water_percent", K_U32, OFF(high_water_percent), 0, 10, 99, "10..99"},
    {"store", "min_free_disk_bytes", K_U64, OFF(min_free_disk_bytes), 0, 0, 1ull << 44, "0..17592186044416"},
    {"delivery", "ack_timeout_ms", K_U64, OFF(ack_timeout_ms), 0, 100, DAY_MS, "100..86400000"},
    {"delivery", "max_nak_delay_ms", K_U64, OFF(max_nak_delay_ms), 0, 0, 7 * DAY_MS, "0..604800000"},
    {"delivery", "notice_ttl_ms", K_U64, OFF(notice_ttl_ms), 0, 1000, 365 * DAY_MS, "1000..31536000000"},
    {"delivery", "max_deadlines_per_turn", K_U32, OFF(max_deadlines_per_turn), 0, 1, 1000000, "1..1000000"},
    {"retention", "body_grace_ms", K_U64, OFF(body_grace_ms), 0, 0, 30 * DAY_MS, "0..2592000000"},
    {"retention", "keep_ms", K_U64, OFF(keep_ms), 0, DAY_MS, 3650 * DAY_MS,
     "86400000..315360000000 (six months or more where network logs must be kept)"},
    {"retention", "max_per_turn", K_U32, OFF(retention_max_per_turn), 0, 1, 100000, "1..100000"},
    {"retention", "sweep_interval_ms", K_U64, OFF(sweep_interval_ms), 0, 1000, DAY_MS,
     "1000..86400000"},
    {"metrics", "listen", K_LISTEN, OFF(metrics_listen), sizeof ((config *)0)->metrics_listen, 0, 0,
     "empty (off), or a numeric address and port such as 127.0.0.1:9464 or [::1]:9464"},
    {"metrics", "allow_remote", K_BOOL, OFF(metrics_allow_remote), 0, 0, 0, "true or false"},
    {"admin", "socket", K_TEXT, OFF(admin_socket), sizeof ((config *)0)->admin_socket, 0, 0,
     "a file path (an ipc socket), such as /run/referral/admin.sock"},
    {"admin", "group_access", K_BOOL, OFF(admin_group_access), 0, 0, 0, "true or false"},
    {"federation", "peer_listen", K_TEXT, OFF(peer_listen), sizeof ((config *)0)->peer_listen, 0, 0,
     "a ZeroMQ endpoint such as tcp://0.0.0.0:7401"},
    {"federation", "peer_window", K_U32, OFF(peer_window), 0, 1, 65536, "1..65536"},
    {"federation", "heartbeat_ms", K_U32, OFF(heartbeat_ms), 0, 100, 600000, "100..600000"},
    {"federation", "peer_timeout_ms", K_U32, OFF(peer_timeout_ms), 0, 300, 3600000, "300..3600000"},
    {"federation", "stall_ms", K_U32, OFF(stall_ms), 0, 1000, 86400000, "1000..86400000"},
    {"federation", "stall_alert_to", K_TEXT, OFF(stall_alert_to),
     sizeof ((config *)0)->stall_alert_to, 0, 0, "agency ids, comma-separated"},
};

const config_peer *config_peer_find(const config *cfg, const char *id)
{
    for (size_t i = 0; i < cfg->n_peers; i++)
        if (strcmp(cfg->peers[i].id, id) == 0)
            return &cfg->peers[i];
    return NULL;
}

/* [peers] BROKER = ENDPOINT and [routes] BROKER = VIA (or default = VIA):
 * keys named by the operator, so not in the table above. */
static bool on_federation_key(parse_state *st, const char *section, const char *name,
                              const char *value)
{
    config *cfg = st->cfg;
    if (strcmp(section, "peers") == 0) {
        if (!ids_is_valid_name(name) || value[0] == '\0' || strlen(value) >= 256) {
            snprintf(st->err, st->err_len, "[peers] %.64s = \"%.64s\": expected a broker id = "
                     "its peer endpoint", name, value);
            return false;
        }
        if (cfg->n_peers == CONFIG_MAX_PEERS || config_peer_find(cfg, name) != NULL) {
            snprintf(st->err, st->err_len, "[peers] %s: listed twice, or more than %d peers",
                     name, CONFIG_MAX_PEERS);
            return false;
        }
        config_peer *p = &cfg->peers[cfg->n_peers++];
        snprintf(p->id, sizeof p->id, "%s", name);
        snprintf(p->endpoint, sizeof p->endpoint, "%s", value);
        return true;
    }
    bool is_default = strcmp(name, "default") == 0;
    if ((!is_default && !ids_is_valid_name(name)) || !ids_is_valid_name(value)) {
        snprintf(st->err, st->err_len, "[routes] %.64s = \"%.64s\": expected a broker id (or "
                 "default) = the peer to send its traffic through", name, value);
        return false;
    }
    if (is_default) {
        snprintf(cfg->default_route, sizeof cfg->default_route, "%s", value);
        return true;
    }
    if (cfg->n_routes == CONFIG_MAX_ROUTES) {
        snprintf(st->err, st->err_len, "[routes]: more than %d routes", CONFIG_MAX_ROUTES);
        return false;
    }
    config_route *r = &cfg->routes[cfg->n_routes++];
    snprintf(r->to, sizeof r->to, "%s", name);
    snprintf(r->via, sizeof r->via, "%s", value);
    return true;
}

/* Every route goes through a listed peer; no peer is this broker. */
static bool check_federation(const config *cfg, char *err, size_t err_len)
{
    for (size_t i = 0; i < cfg->n_peers; i++)
        if (strcmp(cfg->peers[i].id, cfg->id) == 0) {
            snprintf(err, err_len, "[peers] lists this broker (%s) itself", cfg->id);
            return false;
        }
    for (size_t i = 0; i <= cfg->n_routes; i++) {
        const char *via = i < cfg->n_routes ? cfg->routes[i].via : cfg->default_route;
        if (via[0] != '\0' && config_peer_find(cfg, via) == NULL) {
            snprintf(err, err_len, "[routes] %s goes through %s, which is not in [peers]",
                     i < cfg->n_routes ? cfg->routes[i].to : "default", via);
            return false;
        }
    }
    char list[sizeof cfg->stall_alert_to];
    snprintf(list, sizeof list, "%s", cfg->stall_alert_to);
    size_t n_to = 0;
    for (char *save = NULL, *id = strtok_r(list, ", ", &save); id != NULL;
         id = strtok_r(NULL, ", ", &save)) {
        if (!ids_is_valid_name(id) || ++n_to > CONFIG_MAX_STALL_ALERT_TO) {
            snprintf(err, err_len, "[federation] stall_alert_to: \"%.64s\" is not an agency id, "
                     "or more than %d are listed", id, CONFIG_MAX_STALL_ALERT_TO);
            return false;
        }
    }
    if (cfg->n_peers > 0 && cfg->peer_listen[0] == '\0') {
        snprintf(err, err_len, "[peers] are listed but [federation] peer_listen is empty: peers "
                 "need an endpoint to send to this broker");
        return false;
    }
    return true;
}

static bool apply(const key_spec *k, config *cfg, const char *value)
{
    char *field = (char *)cfg + k->offset;
    uint64_t x;
    switch (k->type) {
    case K_U32:
        if (!parse_u64(value, k->lo, k->hi, &x))
            return false;
        *(uint32_t *)(void *)field = (uint32_t)x;
        return true;
    case K_U64:
        if (!parse_u64(value, k->lo, k->hi, &x))
            return false;
        *(uint64_t *)(void *)field = x;
        return true;
    case K_TEXT:
        return copy_text(value, field, k->size);
    case K_ID:
        if (!ids_is_valid_name(value))
            return false;
        return copy_text(value, field, IDS_NAME_MAX + 1);
    case K_LEVEL:
        return log_level_from_name(value, (log_level *)(void *)field);
    case K_BOOL:
        *(bool *)(void *)field = strcmp(value, "true") == 0;
        return *(bool *)(void *)field || strcmp(value, "false") == 0;
    case K_LISTEN: {
        struct sockaddr_storage addr;
        socklen_t len;
        bool is_loopback;
        if (value[0] == '\0') {
            field[0] = '\0';
            return true;
        }
        return metrics_parse_listen(value, &addr, &len, &is_loopback) &&
               copy_text(value, field, k->size);
    }
    }
    return false;
}

static int on_key(void *user, const char *section, const char *name, const char *value)
{
    parse_state *st = user;
    if (st->has_error)
        return 0;
    if (strcmp(section, "peers") == 0 || strcmp(section, "routes") == 0) {
        st->has_error = !on_federation_key(st, section, name, value);
        return st->has_error ? 0 : 1;
    }
    if (strncmp(section, "policy.", 7) == 0) {
        st->has_error = !policy_parse_key(&st->cfg->policies, section, name, value, st->err,
                                          st->err_len);
        return st->has_error ? 0 : 1;
    }
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        if (strcmp(keys[i].section, section) == 0 && strcmp(keys[i].name, name) == 0) {
            if (apply(&keys[i], st->cfg, value))
                return 1;
            snprintf(st->err, st->err_len, "[%s] %s = \"%.64s\" is not valid; expected %s",
                     section, name, value, keys[i].hint);
            st->has_error = true;
            return 0;
        }
    }
    snprintf(st->err, st->err_len, "unknown key [%s] %s (see etc/referrald.example.ini)",
             section, name);
    st->has_error = true;
    return 0;
}

bool config_load(const char *path, config *cfg, char *err, size_t err_len)
{
    config_defaults(cfg);
    memset(&cfg->policies, 0, sizeof cfg->policies);   /* the file's, then built-in ones */
    char detail[384] = "";
    parse_state st = {.cfg = cfg, .err = detail, .err_len = sizeof detail, .has_error = false};
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        snprintf(err, err_len, "cannot open configuration %s: %s", path, strerror(errno));
        return false;
    }
    int rc = ini_parse_file(f, on_key, &st);
    fclose(f);
    if (st.has_error) {   /* inih returns the line of the first key we refused */
        snprintf(err, err_len, "configuration %s line %d: %s", path, rc, detail);
        return false;
    }
    if (rc != 0) {
        snprintf(err, err_len, "configuration %s: line %d is not valid INI syntax", path, rc);
        return false;
    }
    const char *missing = cfg->id[0] == '\0' ? "[broker] id"
                        : cfg->listen[0] == '\0' ? "[broker] listen"
                        : cfg->data_dir[0] == '\0' ? "[broker] data_dir"
                        : cfg->directory[0] == '\0' ? "[trust] directory"
                        : cfg->trust_root[0] == '\0' ? "[trust] trust_root"
                        : cfg->key_dir[0] == '\0' ? "[trust] key_dir" : NULL;
    if (missing != NULL) {
        snprintf(err, err_len, "configuration %s: required key %s is missing", path, missing);
        return false;
    }
    if (cfg->max_sessions_per_agency > cfg->max_sessions) {
        snprintf(err, err_len, "configuration %s: [limits] max_sessions_per_agency (%" PRIu32
                 ") must not exceed max_sessions (%" PRIu32 "); lower it or raise max_sessions",
                 path, cfg->max_sessions_per_agency, cfg->max_sessions);
        return false;
    }
    if (cfg->max_body_bytes + 8192u > cfg->max_frame_bytes) {
        snprintf(err, err_len, "configuration %s: [limits] max_body_bytes (%" PRIu32
                 ") must be at least 8192 below max_frame_bytes (%" PRIu32 ")",
                 path, cfg->max_body_bytes, cfg->max_frame_bytes);
        return false;
    }
    struct sockaddr_storage maddr;
    socklen_t mlen;
    bool is_loopback = true;
    if (cfg->metrics_listen[0] != '\0' &&
        metrics_parse_listen(cfg->metrics_listen, &maddr, &mlen, &is_loopback) && !is_loopback &&
        !cfg->metrics_allow_remote) {
        snprintf(err, err_len, "configuration %s: [metrics] listen = %s is not a loopback "
                 "address; metrics carry no authentication: use 127.0.0.1, or set [metrics] "
                 "allow_remote = true and restrict who can reach the port", path,
                 cfg->metrics_listen);
        return false;
    }
    char why[300];
    if (!check_federation(cfg, why, sizeof why)) {
        snprintf(err, err_len, "configuration %s: %s", path, why);
        return false;
    }
    if (!policy_finish(&cfg->policies, why, sizeof why)) {
        snprintf(err, err_len, "configuration %s: %s", path, why);
        return false;
    }
    return true;
}
