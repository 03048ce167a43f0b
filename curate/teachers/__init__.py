"""Talking to teachers: the transport under the `sample` operator (curate/sample.py).

How one `sample` step turns rows into traces:

1. `curate.sample` renders each row's messages (Jinja2 templates, system prompts), picks each
   sample's temperature and seed, and gives every sample a cache key (`requests.cache_key`:
   provider, model, messages, sampling params except max_tokens, sample index).
2. `cache.RequestCache` answers what it can: an earlier answer is reused unless it was an error,
   or max_tokens changed in a way that would change it (`cache.reusable`).
3. The rest become `requests.Request`s (one per sample, or one per group with the server's
   native `n`) and go to `dispatch.Dispatcher`, one event loop for every teacher: per teacher a
   pool of `max_concurrency` workers, RPM/TPM token buckets (`limits`), retries with backoff
   (`openai_client`), finish-reason retries, the budget (`budget`), Ctrl-C.
4. Each answer is written to the cache as it arrives (in small batches), so a killed build
   re-sends only what had no answer.
5. `curate.sample` builds one pool row per sample from the answers: completion, reasoning,
   finish_reason, usage, cost, or `error` when the request failed for good.

Every provider's answers have one shape (`requests.Answer`), so caching, cost and the
finish-reason policy are the same for an HTTP endpoint and for vLLM in this process.
"""
