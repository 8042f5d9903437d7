#!/bin/sh
# `docker run IMAGE <step> --flag ...` runs one step (python -m components); anything else, such as
# the command KFP or kfp.local's DockerRunner give the container, runs as given.
case "${1:-}" in
  ingest|preprocess|train|evaluate|export|""|-h|--help) exec python3 -m components "$@" ;;
  *) exec "$@" ;;
esac
