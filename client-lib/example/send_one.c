/*
 * send_one: the smallest program on libreferral. It connects as one
 * agency, sends one referral and prints its id. Build it against an
 * installed libreferral with pkg-config alone:
 *
 *   cc send_one.c $(pkg-config --cflags --libs libreferral) -o send_one
 *
 * Usage: send_one AGENCY KEY_DIR DIRECTORY ROOT BROKER STATE_DIR TO_AGENCY [ENDPOINT]
 */
#include <stdio.h>

#include <referral.h>

int main(int argc, char **argv)
{
    if (argc < 8) {
        fprintf(stderr, "usage: send_one AGENCY KEY_DIR DIRECTORY ROOT BROKER STATE_DIR TO "
                        "[ENDPOINT]\n");
        return 2;
    }
    ref_config cfg = {
        .agency_id = argv[1], .key_dir = argv[2], .directory = argv[3], .trust_root = argv[4],
        .broker_id = argv[5], .state_dir = argv[6], .endpoint = argc > 8 ? argv[8] : NULL,
    };
    ref_client *client = NULL;
    char detail[512];
    ref_err err = ref_client_new(&cfg, &client, detail, sizeof detail);
    if (err != REF_OK) {
        fprintf(stderr, "send_one: %s: %s\n", ref_strerror(err), detail);
        return 1;
    }
    ref_referral r = {
        .to_agency = argv[7],
        .urgency = REF_URGENCY_URGENT,
        .category = REF_CATEGORY_PROTECTION,
        .narrative = "sent by the libreferral example",
    };
    char message_id[REF_ID_HEX_LEN + 1];
    err = ref_send(client, &r, message_id, NULL);
    if (err != REF_OK)
        fprintf(stderr, "send_one: %s: %s\n", ref_strerror(err), ref_client_last_detail(client));
    else
        printf("%s\n", message_id);
    ref_client_destroy(&client);
    return err == REF_OK ? 0 : 1;
}
