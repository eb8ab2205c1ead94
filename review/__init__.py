"""The trust loop: humans spot-check published videos; rejected ones are withdrawn and re-rendered or refused.

One concern per module:

* ``sampling`` — which published videos are reviewed (flagged, re-renders, first renders of a template
  version, a stratified sample), as rules every replica applies alike;
* ``book`` — the review queue as state read from Kafka on every API replica (an observer of the video index):
  queued videos, claims with leases (first claim in the log wins), verdicts, withdrawals;
* ``feedback`` — a rejection -> ``video.withdrawn`` and the re-render request or refusal it implies (pure);
* ``desk`` — the behaviour over the book: claim the next video, record a verdict, publish the feedback;
* ``auth`` — reviewers and their tokens; ``page`` — the HTML review page; ``routes`` — its HTTP routes;
* ``report`` — approval rates with Wilson intervals, reject reasons, HTML charts; ``export`` — training
  examples as JSONL with a dataset card; ``source`` — reading ``video.reviewed``; ``cli`` — ``skuvid review``.
"""
