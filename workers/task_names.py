"""Task names, shared by the producer (which sends by name, without importing the tasks),
the tasks themselves and the leases (which read what a message covers from its name)."""

ANSWER_TASK = "distillery.answer"
ROUTE_TASK = "distillery.route"
REDUCE_TASK = "distillery.reduce"
TRAIN_TASK = "distillery.train"
BATCH_SUBMIT_TASK = "distillery.batch_submit"
BATCH_POLL_TASK = "distillery.batch_poll"
JUDGE_TASK = "distillery.judge"
