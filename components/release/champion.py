"""The champion lookup: does this run train at all, and from which weights?

Scheduled retraining on unchanged inputs should not train again: when the data (images, labels and
splits), the preprocessing and the training options are all what the champion was made from, the run
ends with a note instead (`skip_unchanged`). Any of the three changed is a reason to train: a new
learning rate on the same images is a new candidate, and the gate decides whether it is better. With
`warm_start` the new model starts from the champion's Keras weights when the architecture is the same.
"""
from __future__ import annotations

from dataclasses import dataclass

from imgclf.components.contracts import RecordsMetadata
from imgclf.components.lib import registry as layout
from imgclf.components.lib import storage
from imgclf.components.lib.options import fingerprint, takes
from imgclf.components.release.options import ChampionOptions


@dataclass
class Lookup:
    action: str  # "train" or "skip"
    reason: str
    champion_version: int = 0
    champion_data_fingerprint: str = ""
    warm_start_from: str = ""  # the champion's Keras model folder, when warm starting


def _train_options(given: str):
    """The run's train options from their JSON (the pipeline passes them all; a direct call may leave some
    or all out: they take their defaults)."""
    import json

    from imgclf.components.steps import options

    cls = options("train")
    return cls(**cls.pick(json.loads(given or "{}")))


def _changes(champ: dict, meta: RecordsMetadata, train_fp: str) -> list[str]:
    """What differs between the champion's inputs and this run's, in words (empty: nothing)."""
    changed = []
    if champ["data_fingerprint"] != meta.data_fingerprint:
        changed.append(f"the data changed (fingerprint {champ['data_fingerprint'][:12]} -> "
                       f"{meta.data_fingerprint[:12]})")
    elif champ.get("fingerprint") != meta.fingerprint:
        changed.append("the preprocessing options changed")
    # A champion published before imgclf recorded its options is judged on data and preprocessing alone,
    # as then: otherwise every scheduled run would train again until a new champion is published.
    if champ.get("train_options_fingerprint", train_fp) != train_fp:
        changed.append("the training options changed")
    return changed


@takes(ChampionOptions)
def lookup(dataset_dir: str, opts: ChampionOptions, *, train_options: str = "") -> Lookup:
    """Decide whether this run trains: not when data, preprocessing and training options are the champion's.

    `train_options` is this run's train options as a JSON object (name -> value); options left out take
    their defaults. JSON, so the step's command line takes it like any other flag.
    """
    meta = RecordsMetadata.load(dataset_dir)
    train = _train_options(train_options)
    train_fp = fingerprint(train)
    if not opts.registry:
        result = Lookup("train", "no registry given")
    else:
        champ = layout.champion(opts.registry, opts.model_name)
        if champ is None:
            result = Lookup("train", f"no champion yet for {opts.model_name!r} in {opts.registry}")
        else:
            v = champ["version"]
            changed = _changes(champ, meta, train_fp)
            if not changed and opts.skip_unchanged:
                what = f"the data (fingerprint {meta.data_fingerprint[:12]}), preprocessing and training options " \
                    f"are what champion v{v} was trained with" if champ.get("train_options_fingerprint") else \
                    f"the data (fingerprint {meta.data_fingerprint[:12]}) and preprocessing are what champion v{v} " \
                    "was trained with (its training options were not recorded, so they were not compared)"
                result = Lookup("skip", what, v, champ["data_fingerprint"])
            else:
                why = "; ".join(changed) + f" since champion v{v}" if changed else \
                    "the data and options are unchanged but skip_unchanged is off"
                warm, note = "", ""
                if opts.warm_start:
                    same_net = champ.get("architecture") == train.architecture
                    warm = storage.join(champ["uri"], layout.KERAS_DIR) if same_net else ""
                    note = "" if same_net else (f"; no warm start: champion v{v} is {champ.get('architecture')}, "
                                                f"this run {train.architecture}")
                result = Lookup("train", why + note, v, champ["data_fingerprint"], warm)
    print(f"champion lookup: {result.action}: {result.reason}"
          + (f"; warm start from {result.warm_start_from}" if result.warm_start_from else ""), flush=True)
    return result
