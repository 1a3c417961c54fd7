/*
 * pool.c - the thread pool: a job is (fn, ctx, n); tasks are handed out by an
 * atomic counter. A generation number tells sleeping workers that a job has
 * arrived; `active` counts workers inside a job. The caller returns when
 * every task is done and no worker is inside, and starts the next job only
 * once a worker that woke late for the last one (after the caller ran it
 * alone) has left too, so no straggler can take an index of the next job
 * from a counter being reset.
 */
#include "pool.h"
#include "util.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

struct gq_pool {
	int n_threads;
	pthread_t *threads; /* n_threads - 1 workers */
	pthread_mutex_t mu;
	pthread_cond_t work, done;
	unsigned generation;
	int stop;
	void (*fn)(void *, int);
	void *ctx;
	int n_tasks;
	atomic_int next;    /* next task index to take */
	atomic_int pending; /* tasks not yet finished */
	int active;         /* workers inside the current job (under mu) */
};

static void run_tasks(gq_pool *p)
{
	int i;

	while ((i = atomic_fetch_add(&p->next, 1)) < p->n_tasks) {
		p->fn(p->ctx, i);
		if (atomic_fetch_sub(&p->pending, 1) == 1) {
			pthread_mutex_lock(&p->mu);
			pthread_cond_signal(&p->done);
			pthread_mutex_unlock(&p->mu);
		}
	}
}

static void *worker(void *arg)
{
	gq_pool *p = arg;
	unsigned seen = 0;

	for (;;) {
		pthread_mutex_lock(&p->mu);
		while (!p->stop && p->generation == seen)
			pthread_cond_wait(&p->work, &p->mu);
		if (p->stop) {
			pthread_mutex_unlock(&p->mu);
			return NULL;
		}
		seen = p->generation;
		p->active++;
		pthread_mutex_unlock(&p->mu);
		run_tasks(p);
		pthread_mutex_lock(&p->mu);
		if (--p->active == 0)
			pthread_cond_signal(&p->done);
		pthread_mutex_unlock(&p->mu);
	}
}

int gq_pool_create(gq_pool **out, int threads)
{
	gq_pool *p = calloc(1, sizeof *p);

	if (!p)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	p->n_threads = threads < 1 ? 1 : threads;
	p->threads = calloc((size_t)p->n_threads, sizeof *p->threads);
	if (!p->threads) {
		free(p);
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	}
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->work, NULL);
	pthread_cond_init(&p->done, NULL);
	for (int i = 0; i < p->n_threads - 1; i++)
		if (pthread_create(&p->threads[i], NULL, worker, p) != 0) {
			p->n_threads = i + 1; /* fewer threads, still correct */
			break;
		}
	*out = p;
	return GQ_OK;
}

void gq_pool_free(gq_pool *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	p->stop = 1;
	pthread_cond_broadcast(&p->work);
	pthread_mutex_unlock(&p->mu);
	for (int i = 0; i < p->n_threads - 1; i++)
		pthread_join(p->threads[i], NULL);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->work);
	pthread_cond_destroy(&p->done);
	free(p->threads);
	free(p);
}

int gq_pool_threads(const gq_pool *p)
{
	return p ? p->n_threads : 1;
}

void gq_pool_run(gq_pool *p, int n, void (*fn)(void *ctx, int i), void *ctx)
{
	if (!p || p->n_threads == 1 || n <= 1) {
		for (int i = 0; i < n; i++)
			fn(ctx, i);
		return;
	}
	pthread_mutex_lock(&p->mu);
	/*
	 * A worker that woke for the last job after this thread had finished it
	 * alone may still be leaving it: it would take an index of this job from
	 * the counter being reset and lose its count (a hang). Wait it out.
	 */
	while (p->active > 0)
		pthread_cond_wait(&p->done, &p->mu);
	p->fn = fn;
	p->ctx = ctx;
	p->n_tasks = n;
	atomic_store(&p->next, 0);
	atomic_store(&p->pending, n);
	p->generation++;
	pthread_cond_broadcast(&p->work);
	pthread_mutex_unlock(&p->mu);
	run_tasks(p);
	pthread_mutex_lock(&p->mu);
	while (atomic_load(&p->pending) > 0 || p->active > 0)
		pthread_cond_wait(&p->done, &p->mu);
	pthread_mutex_unlock(&p->mu);
}

typedef struct {
	int64_t n, step;
	void (*fn)(void *ctx, int64_t lo, int64_t hi);
	void *ctx;
} spans_job;

static void span_task(void *p, int i)
{
	const spans_job *j = p;
	int64_t lo = i * j->step, hi = lo + j->step < j->n ? lo + j->step : j->n;

	if (lo < hi)
		j->fn(j->ctx, lo, hi);
}

void gq_pool_spans(int64_t n, int64_t min_span, int threads,
		   void (*fn)(void *ctx, int64_t lo, int64_t hi), void *ctx)
{
	int64_t spans = n / (min_span > 0 ? min_span : 1);
	gq_pool *pool = NULL;

	spans = spans < threads ? spans : threads;
	spans = spans > 1 ? spans : 1;
	spans_job j = {n, (n + spans - 1) / spans, fn, ctx};

	if (spans > 1 && gq_pool_create(&pool, (int)spans))
		pool = NULL;
	gq_pool_run(pool, (int)spans, span_task, &j);
	gq_pool_free(pool);
}
