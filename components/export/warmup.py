"""TF Serving warm-up requests: `assets.extra/tf_serving_warmup_requests` inside a SavedModel.

TF Serving replays these requests when it loads a version, before the version takes traffic, so the
first real request does not pay for graph initialisation. The file is a TFRecord of
`tensorflow_serving.apis.PredictionLog` messages. Those classes come from `tensorflow-serving-api`,
installed with `--no-deps` (`make install` does it): its wheel depends on the full `tensorflow` package,
which must not be installed beside `tensorflow-cpu`.
"""
from __future__ import annotations

WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
SIGNATURE = "serving_default"


def _apis():
    try:
        from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2
    except ImportError as e:
        raise ImportError("writing TF Serving warm-up requests needs tensorflow-serving-api: "
                          "pip install --no-deps tensorflow-serving-api==2.21.0 (make install does this)") from e
    return model_pb2, predict_pb2, prediction_log_pb2


def write(path: str, input_key: str, batches: list[list[bytes]], model_name: str = "model") -> int:
    """One PredictRequest per batch of encoded images; returns how many requests were written."""
    import tensorflow as tf

    model_pb2, predict_pb2, prediction_log_pb2 = _apis()
    with tf.io.TFRecordWriter(path) as w:
        for blobs in batches:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=SIGNATURE))
            request.inputs[input_key].CopyFrom(tf.make_tensor_proto(blobs, dtype=tf.string))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            w.write(log.SerializeToString())
    return len(batches)


def read(path: str) -> list:
    """The PredictRequests of a warm-up file, parsed with TF Serving's own message classes."""
    import tensorflow as tf

    _, _, prediction_log_pb2 = _apis()
    requests = []
    for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
        log = prediction_log_pb2.PredictionLog.FromString(raw)
        if log.WhichOneof("log_type") != "predict_log":
            raise ValueError(f"{path}: warm-up record of type {log.WhichOneof('log_type')}, expected predict_log")
        requests.append(log.predict_log.request)
    return requests


def replay(signatures, path: str) -> int:
    """Run every warm-up request through its signature, as TF Serving does at load; returns the count."""
    import tensorflow as tf

    requests = read(path)
    for req in requests:
        fn = signatures[req.model_spec.signature_name or SIGNATURE]
        fn(**{k: tf.constant(tf.make_ndarray(v)) for k, v in req.inputs.items()})
    return len(requests)
