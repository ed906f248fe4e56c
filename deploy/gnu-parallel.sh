#!/bin/sh
# cloops on a few machines over ssh with GNU parallel: one worker per host, each building its
# shard of the backlog and publishing what of it completed, all sharing the response cache on
# one bucket. The hosts publish to the template's one publish.url at once: index.json is
# merged with the destination's under a precondition, so they keep each other's stories.
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

# {} is 0 … N-1: the shard of that job (CLOOPS_SHARD=i/N); one job per host (-j1); the
# build's exit status is the job's, the publish runs either way (what completed is published)
seq 0 $((N - 1)) | parallel --sshloginfile "$HOSTS" -j1 --line-buffer --tag \
  --env OPENAI_API_KEY --env REPLICATE_API_TOKEN \
  --env AWS_ACCESS_KEY_ID --env AWS_SECRET_ACCESS_KEY --env CLOOPS_CACHE_URL \
  'cd ~/cloops-project && export CLOOPS_SHARD={}/'"$N"' CLOOPS_WORKER_ID=$(hostname)-{} &&
   .venv/bin/doit; rc=$?; .venv/bin/doit publish && exit $rc'

# what the whole fleet spent, per template, story, step and worker
.venv/bin/doit report --shared
