"""Task names, shared by the producer (which sends by name, without importing the tasks),
the tasks themselves and the leases (which read what a message covers from its name)."""

ANSWER_TASK = "distillery.answer"
ROUTE_TASK = "distillery.route"
REDUCE_TASK = "distillery.reduce"
TRAIN_TASK = "distillery.train"
JUDGE_TASK = "distillery.judge"
