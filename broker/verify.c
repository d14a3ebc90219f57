/*
 * verify: the signature-check worker pool (verify.h). Each worker owns a
 * PULL socket for jobs and a PUSH socket for results; a job of id 0 tells
 * it to stop. Workers call only sign_verify_envelope(), which keeps no
 * state between calls, so they share nothing with each other or the loop.
 *
 * It must never answer "valid" for a check it did not make, nor block the
 * loop thread.
 */
#include "verify.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zmq.h>

#include "log.h"

#define JOBS_ENDPOINT "inproc://referral-verify-jobs"
#define RESULTS_ENDPOINT "inproc://referral-verify-results"
#define MAX_WORKERS 64

typedef struct {
    uint64_t id;
    uint8_t is_valid;
} verify_result;

struct verifier {
    void *zctx;
    void *jobs;                 /* PUSH, bound; the loop's */
    void *results;              /* PULL, bound; the loop's */
    pthread_t threads[MAX_WORKERS];
    unsigned n_threads;
    size_t in_flight;
};

unsigned verifier_default_workers(void)
{
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    return cores > 2 ? (unsigned)(cores - 1) : 1;
}

static void *worker_main(void *arg)
{
    void *zctx = arg;
    void *in = zmq_socket(zctx, ZMQ_PULL), *out = zmq_socket(zctx, ZMQ_PUSH);
    int zero = 0;
    if (in == NULL || out == NULL || zmq_setsockopt(in, ZMQ_LINGER, &zero, sizeof zero) != 0 ||
        zmq_setsockopt(out, ZMQ_LINGER, &zero, sizeof zero) != 0 ||
        zmq_connect(in, JOBS_ENDPOINT) != 0 || zmq_connect(out, RESULTS_ENDPOINT) != 0) {
        log_error("verify", "worker cannot open its sockets err=%s", zmq_strerror(errno));
        if (in != NULL)
            zmq_close(in);
        if (out != NULL)
            zmq_close(out);
        return NULL;
    }
    for (;;) {
        verify_job job;
        int n = zmq_recv(in, &job, sizeof job, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n != (int)sizeof job || job.id == 0)
            break;
        verify_result r = {.id = job.id};
        r.is_valid = sign_verify_envelope(job.public_key, job.header, job.header_len, job.body,
                                          job.body_len, job.signature);
        while (zmq_send(out, &r, sizeof r, 0) < 0 && errno == EINTR)
            ;
    }
    zmq_close(in);
    zmq_close(out);
    return NULL;
}

static void stop_workers(verifier *v)
{
    verify_job stop;
    memset(&stop, 0, sizeof stop);
    int timeout_ms = 2000;   /* a worker that never connected takes no stop job */
    zmq_setsockopt(v->jobs, ZMQ_SNDTIMEO, &timeout_ms, sizeof timeout_ms);
    for (unsigned i = 0; i < v->n_threads; i++)
        while (zmq_send(v->jobs, &stop, sizeof stop, 0) < 0 && errno == EINTR)
            ;
    for (unsigned i = 0; i < v->n_threads; i++)
        pthread_join(v->threads[i], NULL);
    v->n_threads = 0;
}

void verifier_destroy(verifier **vp)
{
    if (vp == NULL || *vp == NULL)
        return;
    verifier *v = *vp;
    if (v->jobs != NULL)
        stop_workers(v);
    if (v->jobs != NULL)
        zmq_close(v->jobs);
    if (v->results != NULL)
        zmq_close(v->results);
    free(v);
    *vp = NULL;
}

verifier *verifier_new(void *zctx, unsigned n)
{
    if (n == 0 || n > MAX_WORKERS) {
        errno = EINVAL;
        return NULL;
    }
    verifier *v = calloc(1, sizeof *v);
    if (v == NULL)
        return NULL;
    v->zctx = zctx;
    int zero = 0;
    v->jobs = zmq_socket(zctx, ZMQ_PUSH);
    v->results = zmq_socket(zctx, ZMQ_PULL);
    if (v->jobs == NULL || v->results == NULL ||
        zmq_setsockopt(v->jobs, ZMQ_LINGER, &zero, sizeof zero) != 0 ||
        zmq_setsockopt(v->results, ZMQ_LINGER, &zero, sizeof zero) != 0 ||
        zmq_bind(v->jobs, JOBS_ENDPOINT) != 0 || zmq_bind(v->results, RESULTS_ENDPOINT) != 0) {
        int saved = errno;
        if (v->jobs != NULL)
            zmq_close(v->jobs);
        if (v->results != NULL)
            zmq_close(v->results);
        free(v);
        errno = saved;
        return NULL;
    }
    for (unsigned i = 0; i < n; i++) {
        int rc = pthread_create(&v->threads[i], NULL, worker_main, zctx);
        if (rc != 0) {
            verifier_destroy(&v);
            errno = rc;
            return NULL;
        }
        v->n_threads++;
    }
    return v;
}

void *verifier_results_socket(const verifier *v)
{
    return v->results;
}

bool verifier_submit(verifier *v, const verify_job *job)
{
    if (job->id == 0)
        return false;   /* 0 means stop to a worker */
    if (zmq_send(v->jobs, job, sizeof *job, ZMQ_DONTWAIT) != (int)sizeof *job)
        return false;
    v->in_flight++;
    return true;
}

bool verifier_result(verifier *v, uint64_t *id, bool *is_valid)
{
    verify_result r;
    int n = zmq_recv(v->results, &r, sizeof r, ZMQ_DONTWAIT);
    if (n != (int)sizeof r)
        return false;
    *id = r.id;
    *is_valid = r.is_valid != 0;
    if (v->in_flight > 0)
        v->in_flight--;
    return true;
}

size_t verifier_in_flight(const verifier *v)
{
    return v->in_flight;
}
