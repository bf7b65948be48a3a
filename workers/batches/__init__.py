"""Teacher jobs through a provider's Batch API (`submit --via batch`, or `batch = true` on a
tier): pack the job's prompts into input files (`lines`), upload them and start batches
(`submit`), poll each batch from countdown tasks on the control queue, and commit a finished
batch's results to the ledger exactly once (`ingest`). docs/batch.md says how it behaves."""
