/*
 * stream_queue.c - frames written on a thread, in the order they were queued.
 */
#include "stream.h"
#include "util.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct item {
	gq_st_builder b;
	uint64_t bytes; /* b's tensor data */
	void (*release)(void *ctx);
	void *ctx;
	struct item *next;
} item;

struct gq_queue_writer {
	gq_writer *w;
	uint64_t max_bytes, queued_bytes; /* queued_bytes: those not yet written */
	item *head, *tail;
	int busy;     /* the thread is writing an item */
	int stopping;
	int rc;       /* the first failure */
	char err[1024]; /* its message (gq_errmsg is per thread) */
	pthread_mutex_t lock;
	pthread_cond_t changed; /* an item queued or written, or stopping */
	pthread_t thread;
};

static void *write_items(void *arg)
{
	gq_queue_writer *q = arg;

	pthread_mutex_lock(&q->lock);
	for (;;) {
		item *it;

		while (!q->head && !q->stopping)
			pthread_cond_wait(&q->changed, &q->lock);
		if (!(it = q->head))
			break;
		q->head = it->next;
		q->tail = q->head ? q->tail : NULL;
		q->busy = 1;
		pthread_mutex_unlock(&q->lock);
		/* after a failure the rest is only released: the output is broken anyway */
		int rc = q->rc ? q->rc : gq_writer_put(q->w, &it->b);

		pthread_mutex_lock(&q->lock);
		if (rc && !q->rc) {
			q->rc = rc;
			snprintf(q->err, sizeof q->err, "%s", gq_errmsg());
		}
		gq_stb_free(&it->b);
		it->release(it->ctx);
		q->queued_bytes -= it->bytes;
		q->busy = 0;
		free(it);
		pthread_cond_broadcast(&q->changed);
	}
	pthread_mutex_unlock(&q->lock);
	return NULL;
}

int gq_queue_writer_start(gq_queue_writer **qp, gq_writer *w, uint64_t max_bytes)
{
	gq_queue_writer *q = calloc(1, sizeof *q);

	*qp = NULL;
	if (!q)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	q->w = w;
	q->max_bytes = max_bytes;
	pthread_mutex_init(&q->lock, NULL);
	pthread_cond_init(&q->changed, NULL);
	if (pthread_create(&q->thread, NULL, write_items, q) != 0) {
		pthread_mutex_destroy(&q->lock);
		pthread_cond_destroy(&q->changed);
		free(q);
		return gq_err(GQ_ERR_IO, "cannot start a writer thread");
	}
	*qp = q;
	return GQ_OK;
}

/* The first failure, raised in the calling thread; called with the lock held. */
static int failure(const gq_queue_writer *q)
{
	return q->rc ? gq_err(q->rc, "%s", q->err) : GQ_OK;
}

int gq_queue_writer_put(gq_queue_writer *q, gq_st_builder *b, void (*release)(void *ctx),
			void *ctx)
{
	item *it = calloc(1, sizeof *it);
	int rc;

	if (!it) {
		gq_stb_free(b);
		release(ctx);
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	}
	it->b = *b;
	it->release = release;
	it->ctx = ctx;
	for (int i = 0; i < b->n; i++)
		it->bytes += b->tensors[i].nbytes;
	pthread_mutex_lock(&q->lock);
	/* one frame larger than the limit still goes, alone */
	while (q->queued_bytes && q->queued_bytes + it->bytes > q->max_bytes && !q->rc)
		pthread_cond_wait(&q->changed, &q->lock);
	if (q->tail)
		q->tail->next = it;
	else
		q->head = it;
	q->tail = it;
	q->queued_bytes += it->bytes;
	rc = failure(q);
	pthread_cond_broadcast(&q->changed);
	pthread_mutex_unlock(&q->lock);
	return rc;
}

int gq_queue_writer_drain(gq_queue_writer *q)
{
	int rc;

	pthread_mutex_lock(&q->lock);
	while (q->head || q->busy)
		pthread_cond_wait(&q->changed, &q->lock);
	rc = failure(q);
	pthread_mutex_unlock(&q->lock);
	return rc;
}

int gq_queue_writer_stop(gq_queue_writer *q)
{
	int rc;

	if (!q)
		return GQ_OK;
	pthread_mutex_lock(&q->lock);
	q->stopping = 1;
	pthread_cond_broadcast(&q->changed);
	pthread_mutex_unlock(&q->lock);
	pthread_join(q->thread, NULL);
	rc = failure(q);
	pthread_mutex_destroy(&q->lock);
	pthread_cond_destroy(&q->changed);
	free(q);
	return rc;
}
