"""Prometheus metrics of the fleet and of the workflow engine, served at ``GET /metrics``.

Design:

* **Everything is read from the database at scrape time** (``metrics.collector.FleetCollector``, a custom
  ``prometheus_client`` collector), with a fixed number of aggregate queries whatever the size of the fleet.
  That covers the fleet's state (clusters, nodes, accelerators, deployments) and also the counters and histograms
  of runs and steps: a run's start and end and a step's duration are already rows of ``Run`` and ``RunStep``, so
  counting them there is exact across every web pod, gunicorn worker and Celery worker (prometheus_client's
  multiprocess mode only adds up processes sharing one ``PROMETHEUS_MULTIPROC_DIR`` on one host, and the workers
  run in other pods), survives restarts without resets and needs no shared directory. Every web pod answers the
  same figures, so a dashboard aggregates replicas with ``max``, not ``sum``.
* The one figure no table held, how long each health sweep took, is recorded by Celery task signals in the
  worker that ran the sweep (``metrics.sweeps``) into ``SweepTiming``: one row per sweep, updated with
  ``F()`` expressions so concurrent workers never lose a count.
* Queue depth is read from the broker (``metrics.queues``): Redis list lengths of the default queue and the polls
  queue. A broker that does not answer leaves those samples out and sets ``budcluster_broker_up`` to 0; the rest
  of the scrape still answers.
* Protection (``metrics.views``): ``METRICS_TOKEN`` (bearer) and/or ``METRICS_ALLOWED_NETWORKS``; with neither
  set the endpoint is off (404). No label carries a secret: clusters are named by their name, never by their
  server URL, and the broker by the queue name only.

This app sits above every other (it reads clusters, hardware, deployments and core); nothing imports it.
"""
