#!/bin/sh
# cloops on a few machines over ssh with GNU parallel: one worker per host, each building its
# shard of the backlog, all sharing the response cache on one bucket.
#
# Every host needs the project checked out at the same path (templates/, backlogs/, dodo.py)
# with cloops installed in .venv, and network access to the bucket and the paid APIs. The
# keys are passed from this machine's environment (--env) and never written on the hosts.
#
# hosts.txt: one ssh login per line (user@host1 …); `4/` before a login would run 4 jobs there.
set -eu
HOSTS=hosts.txt
N=$(grep -cv '^\s*$' "$HOSTS")
export CLOOPS_CACHE_URL=s3://your-bucket/cloops-cache   # or gs://…, or a shared NFS folder

# {} is 0 … N-1: the shard of that job (CLOOPS_SHARD=i/N); one job per host (-j1)
seq 0 $((N - 1)) | parallel --sshloginfile "$HOSTS" -j1 --line-buffer --tag \
  --env OPENAI_API_KEY --env REPLICATE_API_TOKEN \
  --env AWS_ACCESS_KEY_ID --env AWS_SECRET_ACCESS_KEY --env CLOOPS_CACHE_URL \
  'cd ~/cloops-project && CLOOPS_SHARD={}/'"$N"' CLOOPS_WORKER_ID=$(hostname)-{} .venv/bin/doit'

# publish from here, once: every story is built from the shared cache (paying nothing: every
# answer is there) and published with one complete index.json per template (hosts publishing
# their own shards would each rewrite the index with theirs only)
CLOOPS_WORKER_ID=publisher .venv/bin/doit && .venv/bin/doit publish

# what the whole fleet spent, per template, story, step and worker
.venv/bin/doit report --shared
