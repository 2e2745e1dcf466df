"""Benchmarks of the orchestrator (``python -m bench``, ``make bench``); not timed tests.

* ``proxy``: the LLM proxy's cost per request, against a direct call to the same fake upstream
  and against LiteLLM's proxy in front of it (issue 3).
* ``start``: job start latency, ``CreateJob`` to the worker's first authenticated call, against
  a raw ``docker run`` of the same image making the same call (issue 4).

See ``bench/README.md`` for what each number is and the latest results.
"""
