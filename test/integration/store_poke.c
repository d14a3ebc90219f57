/*
 * store-poke: raw access to a stopped broker's LMDB store, for tests that
 * plant records the broker never writes itself (an unknown deadline kind,
 * an unknown record version) or read what it set aside. It knows nothing
 * of the record layouts (broker/store.h): it moves bytes, so a test states
 * the bytes it means.
 *
 *   store-poke DIR put DB KEYHEX VALHEX       insert or replace a record
 *   store-poke DIR set-byte DB KEYHEX AT HEX  change one byte of a value
 *   store-poke DIR get DB KEYHEX              print the value in hex
 *   store-poke DIR count DB                   print the number of records
 *   store-poke DIR keys DB                    print every key in hex
 *
 * Never run it on the store of a running broker.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lmdb.h>

static size_t from_hex(const char *hex, unsigned char *out, size_t cap)
{
    size_t n = strlen(hex) / 2;
    if (strlen(hex) % 2 != 0 || n > cap) {
        fprintf(stderr, "store-poke: bad hex %s\n", hex);
        exit(2);
    }
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1) {
            fprintf(stderr, "store-poke: bad hex %s\n", hex);
            exit(2);
        }
        out[i] = (unsigned char)v;
    }
    return n;
}

static void print_hex(const MDB_val *v)
{
    for (size_t i = 0; i < v->mv_size; i++)
        printf("%02x", ((const unsigned char *)v->mv_data)[i]);
    printf("\n");
}

static int fail(const char *what, int rc)
{
    fprintf(stderr, "store-poke: %s: %s\n", what, mdb_strerror(rc));
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: store-poke DIR put|set-byte|get|count|keys DB [KEYHEX [...]]\n");
        return 2;
    }
    const char *dir = argv[1], *cmd = argv[2], *db = argv[3];
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    int rc = mdb_env_create(&env);
    if (rc == 0)
        rc = mdb_env_set_maxdbs(env, 32);
    if (rc == 0)
        rc = mdb_env_open(env, dir, MDB_NOTLS, 0600);
    if (rc != 0)
        return fail("open", rc);
    rc = mdb_txn_begin(env, NULL, 0, &txn);
    if (rc == 0)
        rc = mdb_dbi_open(txn, db, 0, &dbi);
    if (rc != 0)
        return fail(db, rc);
    static unsigned char key[512], val[1 << 20];
    MDB_val k = {0}, v = {0};
    if (argc > 4)
        k.mv_size = from_hex(argv[4], key, sizeof key), k.mv_data = key;
    if (strcmp(cmd, "put") == 0 && argc == 6) {
        v.mv_size = from_hex(argv[5], val, sizeof val);
        v.mv_data = val;
        rc = mdb_put(txn, dbi, &k, &v, 0);
    } else if (strcmp(cmd, "set-byte") == 0 && argc == 7) {
        size_t at = strtoul(argv[5], NULL, 10);
        rc = mdb_get(txn, dbi, &k, &v);
        if (rc == 0 && at >= v.mv_size)
            rc = MDB_BAD_VALSIZE;
        if (rc == 0) {
            memcpy(val, v.mv_data, v.mv_size);
            val[at] = (unsigned char)strtoul(argv[6], NULL, 16);
            v.mv_data = val;
            rc = mdb_put(txn, dbi, &k, &v, 0);
        }
    } else if (strcmp(cmd, "get") == 0 && argc == 5) {
        rc = mdb_get(txn, dbi, &k, &v);
        if (rc == 0)
            print_hex(&v);
    } else if ((strcmp(cmd, "count") == 0 || strcmp(cmd, "keys") == 0) && argc == 4) {
        MDB_cursor *c;
        size_t n = 0;
        rc = mdb_cursor_open(txn, dbi, &c);
        while (rc == 0 && mdb_cursor_get(c, &k, &v, MDB_NEXT) == 0) {
            n++;
            if (strcmp(cmd, "keys") == 0)
                print_hex(&k);
        }
        if (rc == 0)
            mdb_cursor_close(c);
        if (rc == 0 && strcmp(cmd, "count") == 0)
            printf("%zu\n", n);
    } else {
        fprintf(stderr, "store-poke: unknown command or arguments: %s\n", cmd);
        return 2;
    }
    if (rc != 0) {
        mdb_txn_abort(txn);
        mdb_env_close(env);
        return fail(cmd, rc);
    }
    rc = mdb_txn_commit(txn);
    mdb_env_close(env);
    return rc == 0 ? 0 : fail("commit", rc);
}
