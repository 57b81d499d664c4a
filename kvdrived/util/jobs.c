/* SPDX-License-Identifier: MIT */
#include "jobs.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "log.h"
#include "loop.h"
#include "macro.h"

struct kvd_jobs {
        pthread_mutex_t lock;
        pthread_cond_t wake;
        struct kvd_job *head, *tail;    /* to run */
        struct kvd_job *finished;       /* run, LIFO: reversed when reaped */
        bool stopping;
        int efd;
        struct kvd_loop_watch efd_w;
        unsigned outstanding;           /* loop thread's count */
        unsigned n_threads;
        pthread_t threads[];
};

static void *thread_main(void *arg)
{
        struct kvd_jobs *p = arg;

        pthread_mutex_lock(&p->lock);
        for (;;) {
                struct kvd_job *j = p->head;
                bool signal;

                if (!j) {
                        if (p->stopping)
                                break;
                        pthread_cond_wait(&p->wake, &p->lock);
                        continue;
                }
                p->head = j->next;
                if (!p->head)
                        p->tail = NULL;
                pthread_mutex_unlock(&p->lock);
                j->run(j);
                pthread_mutex_lock(&p->lock);
                /* One wake-up per batch of finished jobs the loop has not seen. */
                signal = !p->finished;
                j->next = p->finished;
                p->finished = j;
                if (signal) {
                        uint64_t one = 1;

                        (void)!write(p->efd, &one, sizeof(one));
                }
        }
        pthread_mutex_unlock(&p->lock);
        return NULL;
}

int kvd_jobs_new(unsigned threads, const char *name, struct kvd_jobs **ret)
{
        struct kvd_jobs *p;
        int r;

        if (threads == 0)
                return -EINVAL;
        p = calloc(1, sizeof(*p) + threads * sizeof(p->threads[0]));
        if (!p)
                return -ENOMEM;
        pthread_mutex_init(&p->lock, NULL);
        pthread_cond_init(&p->wake, NULL);
        p->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (p->efd < 0) {
                r = -errno;
                kvd_jobs_free(p);
                return r;
        }
        for (unsigned i = 0; i < threads; i++) {
                r = -pthread_create(&p->threads[i], NULL, thread_main, p);
                if (r < 0) {
                        kvd_jobs_free(p);
                        return r;
                }
                pthread_setname_np(p->threads[i], name);
                p->n_threads++;
        }
        *ret = p;
        return 0;
}

struct kvd_jobs *kvd_jobs_free(struct kvd_jobs *p)
{
        if (!p)
                return NULL;
        while (p->outstanding > 0)
                kvd_jobs_wait(p);
        pthread_mutex_lock(&p->lock);
        p->stopping = true;
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->lock);
        for (unsigned i = 0; i < p->n_threads; i++)
                pthread_join(p->threads[i], NULL);
        if (p->efd >= 0)
                close(p->efd);
        pthread_cond_destroy(&p->wake);
        pthread_mutex_destroy(&p->lock);
        free(p);
        return NULL;
}

static void ready(struct kvd_loop_watch *w, uint32_t events)
{
        (void)events;
        kvd_jobs_reap(container_of(w, struct kvd_jobs, efd_w));
}

int kvd_jobs_watch(struct kvd_jobs *p, struct kvd_loop *l)
{
        p->efd_w = (struct kvd_loop_watch){ p->efd, ready };
        return kvd_loop_add(l, &p->efd_w, KVD_LOOP_IN);
}

void kvd_jobs_submit(struct kvd_jobs *p, struct kvd_job *j)
{
        j->next = NULL;
        p->outstanding++;
        pthread_mutex_lock(&p->lock);
        if (p->tail)
                p->tail->next = j;
        else
                p->head = j;
        p->tail = j;
        pthread_cond_signal(&p->wake);
        pthread_mutex_unlock(&p->lock);
}

unsigned kvd_jobs_reap(struct kvd_jobs *p)
{
        struct kvd_job *j, *fifo = NULL, *next;
        unsigned n = 0;
        uint64_t v;

        if (read(p->efd, &v, sizeof(v)) < 0 && errno != EAGAIN)
                log_warning("job pool eventfd: %m");
        pthread_mutex_lock(&p->lock);
        j = p->finished;
        p->finished = NULL;
        pthread_mutex_unlock(&p->lock);
        for (; j; j = next) {
                next = j->next;
                j->next = fifo;
                fifo = j;
        }
        for (j = fifo; j; j = next, n++) {
                next = j->next; /* done() may free or resubmit j */
                p->outstanding--;
                j->done(j);
        }
        return n;
}

unsigned kvd_jobs_wait(struct kvd_jobs *p)
{
        struct pollfd pfd = { .fd = p->efd, .events = POLLIN };

        if (p->outstanding == 0)
                return 0;
        for (;;) {
                unsigned n = kvd_jobs_reap(p);

                if (n > 0 || p->outstanding == 0)
                        return n;
                /* A signal is no reason to leave work unfinished. */
                while (poll(&pfd, 1, -1) < 0 && errno == EINTR)
                        ;
        }
}

unsigned kvd_jobs_outstanding(const struct kvd_jobs *p)
{
        return p->outstanding;
}
