"""A/B experiments: do the product videos sell?

A flat package, one concern per module, none of which knows Kafka (the faust agent is
``consumers/experiment_agent.py``, thin over ``aggregate``):

* ``assignment`` — deterministic user → arm hash, the contract the listing service reproduces.
* ``aggregate`` — per experiment × arm × category × day sufficient statistics, crash-safe and deduplicated.
* ``stats`` — fixed-horizon tests (Welch, two-proportion z), delta-method relative uplift, SRM, power/MDE.
* ``sequential`` — mSPRT: always-valid p-values and confidence intervals for daily looks.
* ``cuped`` — variance reduction with pre-experiment covariates.
* ``report`` — the analysis of one experiment (table, JSON); ``html`` — the HTML report with inline SVG.
* ``simulate`` — seeded engagement streams with known truth; ``changelog`` — the agent's totals, read back.
* ``metrics`` — the report's figures as Prometheus gauges; ``cli`` — ``skuvid experiment …``.
"""
