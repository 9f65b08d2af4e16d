/*
 * sum.h: gman_sum's group (sum.c: the aggregate and its jobs' submission; sum_answers.c:
 * the answers read and summed).
 */
#ifndef GMU_SUM_H
#define GMU_SUM_H

#include "submit.h"

/*
 * gman_sum(function, workload) is an aggregate: mysqld calls gman_sum_clear when a group
 * begins, gman_sum_add for each of its rows and gman_sum for its value. Each row's job is
 * submitted as its row comes (a foreground job, its answer not waited for), so the group's
 * jobs run side by side on as many workers as there are; gman_sum then waits for the
 * answers still out and returns their sum.
 *
 * - Two deadlines. The group's is config_result_wait_ms() (result_timeout_ms) from its
 *   first row, for the whole group: submitting, waiting for room, every answer. Each row's
 *   connect and send ends within timeout_ms too, and on each connection gearmand must
 *   acknowledge a job (JOB_CREATED) within timeout_ms of its send or of the previous
 *   acknowledgement: a stalled server fails the group as soon as gman_do's submit would.
 * - At most SUM_IN_FLIGHT jobs are out, counted from the oldest one not answered yet; the
 *   row that would be one more waits for it. A group holds that many struct sum_job (about
 *   100 KB) however many rows it has, and gearmand no more of its jobs.
 * - A job that fails (WORK_FAIL, WORK_EXCEPTION, a function name gearmand could not take),
 *   a result that is not an integer, a sum beyond 64 bits, a lost connection or the
 *   deadline: the group's value is NULL, with a log line. No more of its rows are
 *   submitted and its connections are closed, so that gearmand drops the jobs of the
 *   group that no worker has started. A row whose function is NULL is left out, as SUM()
 *   leaves out NULL; a group without a job is NULL, as SUM() of nothing is.
 * - Connections: a group takes the thread's connection to each server it uses (or opens
 *   one) and gives it back when the group ends in step, so that another UDF of the same
 *   statement, as in gman_sum('f', gman_do('g', x)), never reads answers meant for it.
 * - gearmand answers the submits of one connection in order: a JOB_CREATED belongs to the
 *   oldest job on that connection still without a handle; WORK_* packets name theirs.
 * - WITH ROLLUP gives NULL for every group: see sum_group_of.
 */
#define SUM_IN_FLIGHT 1000
#define SUM_RESULT_MAX 32 /* a result's bytes: 20 for the integer, some for whitespace */
/* A larger answer is neither a handle nor an integer; a status or warning this large is
 * no worker of ours. Fits the connection's first buffer, header included. */
#define SUM_PACKET_MAX (IN_BUFFER_MIN - HEADER_SIZE)
#define SUM_NO_SLOT (-1) /* for a failure of no server in particular */

struct sum_job {
  uint8_t slot;       /* of the connection it went out on */
  uint8_t handle_len; /* 0 until its JOB_CREATED */
  uint8_t result_len;
  bool done;
  char handle[MAX_HANDLE];
  char result[SUM_RESULT_MAX];
};

enum sum_state { SUM_IDLE, SUM_RUNNING, SUM_DONE, SUM_FAILED };

/* Why a group gives NULL; each has a log line of its own, rate-limited apart. */
enum sum_failure {
  SF_JOB_FAILED, SF_NOT_INTEGER,
  SF_TIMED_OUT,        /* the group's deadline: result_timeout_ms */
  SF_SUBMIT_TIMED_OUT, /* no connection, no room to send or no JOB_CREATED in timeout_ms */
  SF_SERVER, SF_BAD_ROW, SF_NO_MEMORY, SF_SHARED,
  SF_COUNT
};

/* Per-statement state in initid->ptr: the group being summed. */
struct sum_group {
  struct config config; /* the snapshot the group's slots refer to */
  uint64_t generation;
  struct conn conns[MAX_SLOTS];
  unsigned out[MAX_SLOTS];       /* jobs out on each connection */
  unsigned unacked[MAX_SLOTS];   /* of those, jobs still without a JOB_CREATED */
  int64_t ack_due[MAX_SLOTS];    /* while unacked[i] > 0: gearmand's next JOB_CREATED, by */
  uint64_t ack_from[MAX_SLOTS];  /* no job before this one waits for a JOB_CREATED there */
  struct sum_job *jobs;          /* job n of the group is jobs[n % SUM_IN_FLIGHT] */
  uint64_t head, tail;           /* jobs [head, tail) are out or answered out of order */
  enum sum_state state;
  int64_t deadline;              /* the group's, for everything: config_result_wait_ms() */
  int64_t submit_deadline;       /* the row being submitted: timeout_ms, within deadline */
  long long sum;
  char function[41];             /* the first row's (its first 40 bytes), for log lines */
  UDF_INIT *caller;              /* the UDF_INIT of the first clear, add or value call */
  bool shared;                   /* another UDF_INIT called too: see sum_group_of */
  char unique[GENERATED_UNIQUE_LEN + 1];
  const struct job *job;         /* the row's, while sum_submit sends it */
};

/* The group gives NULL: log why (at slot's server, unless SUM_NO_SLOT), stop. */
__attribute__((format(printf, 5, 6)))
void sum_fail(struct sum_group *g, enum sum_failure why, int slot, bool server_fault,
              const char *fmt, ...);
/* The earliest deadline of the group: its own, or a JOB_CREATED's that is owed. */
int64_t sum_next_deadline(const struct sum_group *g);
/* sum_next_deadline() has passed: the group gives NULL. */
void sum_time_out(struct sum_group *g);

enum sum_until { UNTIL_NOTHING, UNTIL_ROOM, UNTIL_ALL };
/* Act on the answers of every connection of the group: those already there (UNTIL_NOTHING),
 * or until a job more may go out (UNTIL_ROOM) or every job is answered (UNTIL_ALL); the
 * latter two time the group out (sum_time_out) once sum_next_deadline() has passed. */
void sum_wait(struct sum_group *g, enum sum_until until);

#endif
