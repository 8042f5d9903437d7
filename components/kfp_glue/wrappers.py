"""Every KFP component by name, for the pipelines: each is defined (generated, checked in) in its step's
`component.py`; the per-pipeline validate components are in pipelines/definitions/*_face.py. `IMAGE`
is the image every task runs in (`IMGCLF_IMAGE`, declared in components/__init__.py)."""
from __future__ import annotations

from imgclf.components import IMAGE
from imgclf.components.audit.component import audit
from imgclf.components.deploy.component import deploy
from imgclf.components.evaluate.component import evaluate
from imgclf.components.export.component import export
from imgclf.components.ingest.component import ingest, ingest_plan, ingest_shard
from imgclf.components.predict.component import predict
from imgclf.components.preprocess.component import preprocess_merge, preprocess_plan, preprocess_shard
from imgclf.components.release.component import champion, gate, not_published, publish, training_skipped
from imgclf.components.sweep.component import select
from imgclf.components.train.component import train, trial

__all__ = ["IMAGE", "audit", "champion", "deploy", "evaluate", "export", "gate", "ingest", "ingest_plan", "ingest_shard",
           "not_published", "predict", "preprocess_merge", "preprocess_plan", "preprocess_shard", "publish", "select",
           "train", "training_skipped", "trial"]
