"""The champion lookup: does this run train at all, and from which weights?

Scheduled retraining on unchanged data should not train again: when the data fingerprint equals the
champion's, the run ends with a note instead (`skip_unchanged`). With `warm_start` the new model
starts from the champion's Keras weights.
"""
from __future__ import annotations

from dataclasses import dataclass

from components.contracts import RecordsMetadata
from components.lib import registry as layout
from components.lib import storage
from components.lib.options import takes
from components.release.options import ChampionOptions


@dataclass
class Lookup:
    action: str  # "train" or "skip"
    reason: str
    champion_version: int = 0
    champion_data_fingerprint: str = ""
    warm_start_from: str = ""  # the champion's Keras model folder, when warm starting


@takes(ChampionOptions)
def lookup(dataset_dir: str, opts: ChampionOptions) -> Lookup:
    """Decide whether this run trains: not when the data is exactly what the champion was trained on."""
    registry, model_name, skip_unchanged, warm_start = opts.registry, opts.model_name, opts.skip_unchanged, \
        opts.warm_start
    fingerprint = RecordsMetadata.load(dataset_dir).data_fingerprint
    if not registry:
        result = Lookup("train", "no registry given")
    else:
        champ = layout.champion(registry, model_name)
        if champ is None:
            result = Lookup("train", f"no champion yet for {model_name!r} in {registry}")
        else:
            v, same = champ["version"], champ["data_fingerprint"] == fingerprint
            keras_dir = storage.join(champ["uri"], layout.KERAS_DIR)
            if same and skip_unchanged:
                result = Lookup("skip", f"the data (fingerprint {fingerprint[:12]}) is what champion v{v} was "
                                "trained on", v, champ["data_fingerprint"])
            else:
                why = "the data is unchanged but skip_unchanged is off" if same else \
                    f"the data changed since champion v{v} (fingerprint {champ['data_fingerprint'][:12]} -> " \
                    f"{fingerprint[:12]})"
                result = Lookup("train", why, v, champ["data_fingerprint"], keras_dir if warm_start else "")
    print(f"champion lookup: {result.action}: {result.reason}"
          + (f"; warm start from {result.warm_start_from}" if result.warm_start_from else ""), flush=True)
    return result
