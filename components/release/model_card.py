"""A model card per published version: what it was trained on, how well it does, what it is for.

Rendered from the version's record, so the card can never disagree with the registry's own data.
"""
from __future__ import annotations


def render(record: dict) -> str:
    from imgclf.components.contracts import InputSpec
    from imgclf.components.lib.reports import markdown_text as md
    from imgclf.components.lib.storage import redact

    spec = InputSpec.from_dict(record)
    m, gate = record["metrics"], record.get("gate", {})
    counts = record.get("split_counts", {})
    per_class = "\n".join(f"| {md(r['class'])} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | "
                          f"{r['support']} |" for r in record.get("per_class", []))
    champ = gate.get("champion") or {}
    compared = (f"Compared with champion v{champ['version']}, re-scored here on "
                f"{champ.get('compared_images', 'the same')} test images neither model trained or validated on "
                f"(its accuracy {champ['accuracy']:.4f}, macro F1 {champ['macro_f1']:.4f}):"
                if "accuracy" in champ else "It was the first version of this model.")
    intervals = record.get("intervals", {})

    def ci(metric: str) -> str:
        c = intervals.get(metric)
        return f" (95 % CI {c['low']:.4f}-{c['high']:.4f})" if c else ""
    params = ", ".join(f"{k}={v}" for k, v in record.get("params", {}).items() if k != "class_weight")
    weights = record.get("params", {}).get("class_weight")
    class_weights = ", ".join(f"{k} {v:g}" for k, v in weights.items()) if isinstance(weights, dict) else "none"
    weakest = sorted(record.get("per_class", []), key=lambda r: (r["f1"], r["class"]))[:3]
    limits = "\n".join(f"- {md(r['class'])}: F1 {r['f1']:.3f} (precision {r['precision']:.3f}, recall "
                       f"{r['recall']:.3f}, {r['support']} test images)" for r in weakest)
    if "ece" in m:
        calibrated = (f"The served probabilities are temperature-scaled (Guo et al., 2017): T = {m['temperature']:.4f}, "
                      "fitted on the validation split. Expected calibration error on the test split (15 confidence "
                      f"bins): {m['ece_uncalibrated']:.4f} before, {m['ece']:.4f} after; a top probability of 0.9 "
                      "is right about that often.")
    else:
        calibrated = "Not calibrated (published before imgclf calibrated models): a probability is softmax's."
    if m.get("abstain_threshold"):
        calibrated += (f"\n\nAnswers with a top probability below {m['abstain_threshold']:.4f} are marked `uncertain` "
                       "by `imgclf predict`, a threshold chosen on the validation split; on the test split it kept "
                       f"{m.get('abstain_test_coverage', 0):.1%} of the answers"
                       + (f", {m['abstain_test_precision']:.1%} of them right." if "abstain_test_precision" in m
                          else "."))
    libraries = ", ".join(f"{k} {v}" for k, v in record.get("libraries", {}).items()) or "(not recorded)"
    return f"""# Model card: {md(record['model_name'])} version {record['version']}

Published {record['created']} by run `{record.get('source_run') or '-'}`.

## Intended use
Classifies a single image into one of {len(spec.classes)} classes: {', '.join(md(c) for c in spec.classes)}.
Send encoded JPEG/PNG/GIF/BMP/WebP bytes to the `serving_default` signature (input `image_bytes`, or
`{{"instances": [{{"b64": "..."}}]}}` over TF Serving's REST API); it answers `probabilities`, `class_index`
and `class_name`. Images are decoded, converted to {spec.color_mode} and resized to
{spec.image_size}x{spec.image_size} inside the model. Not meant for images unlike the
training data (other domains, other classes): it always answers one of the classes above, so check
`probabilities` before acting on a low-confidence answer.

## Data
- source {md(redact(record.get('data') or '(not recorded)'))}
- data fingerprint `{record['data_fingerprint']}` (content hash of the images, labels and splits)
- trained and validated on {record.get('seen_images', {}).get('count', '?')} images, listed by content hash in
  `{record.get('seen_images', {}).get('file', '(not recorded)')}` (later gates leave them out of comparisons)
- split sizes: train {counts.get('train', '?')}, validation {counts.get('validation', '?')}, test {counts.get('test', '?')}

## Model
`{record.get('architecture', record.get('model'))}`; {params}

Class weights in the loss: {class_weights}. Trained with {libraries}.

## Limitations
The weakest classes on the test split (by F1); expect more errors on these:
{limits}

## Metrics on the test split ({m.get('test_images', '?')} images)
accuracy {m['accuracy']:.4f}{ci('accuracy')}, macro F1 {m['macro_f1']:.4f}{ci('macro_f1')},
macro precision {m.get('macro_precision', 0):.4f},
macro recall {m.get('macro_recall', 0):.4f}{f", ROC AUC {m['roc_auc']:.4f}" if 'roc_auc' in m else ''}.

| class | precision | recall | F1 | support |
|---|---|---|---|---|
{per_class}

## Calibration
{calibrated}

## Gate
{compared}
{chr(10).join(f"- {md(r)}" for r in gate.get('reasons', []))}
"""
