#!/bin/sh
# `docker run IMAGE <step> --flag ...` runs one step (python -m imgclf.components, which knows the steps);
# a program the image has, such as the command KFP or kfp.local's DockerRunner give the container, runs
# as given. Only a path counts: `export` is also a shell builtin.
case "$(command -v "${1:-}" 2>/dev/null)" in
  /*) exec "$@" ;;
  *) exec python3 -m imgclf.components "$@" ;;
esac
